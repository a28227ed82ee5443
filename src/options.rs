//! A run's options: every knob of a batch with its default, in one place ([`RunOptions`]). The
//! binary's flags, a pipeline file (`config::Pipeline::apply`) and library callers all fill a
//! `RunOptions`, and the engine resolves it (`RunOptions::resolve`, in `engine::resolve`), so
//! the three give the same run. Precedence between them is the caller's: each lays its values
//! over the ones before (defaults, then a pipeline file, then flags). This module imports no
//! engine: the config loader builds options without a circle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::paths::Knobs;
use crate::progress::OnReload;
use crate::schema::OutputSchema;
use crate::sink::checkpoint::Codec;
use crate::sink::dataset;
use crate::sink::parquet::OutputMode;
use crate::sink::results::ExtraColumns;
use crate::source::template::RecordShape;
use crate::source::{Input, Shard};
use crate::stage::retry::RetryPolicy;
use crate::storage::StoreSettings;

/// Every knob of a batch run. [`RunOptions::default`] is the one place that says each default.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: Input,
    /// Records (a pipeline's `[source]` with `[request]`) shaped into requests; `None` reads
    /// OpenAI Batch request lines.
    pub records: Option<Arc<RecordShape>>,
    /// Sets `model` in every request body (`--model`, a requests pipeline's `request.model`).
    pub model: Option<String>,
    /// New attempts for a reply that breaks the records' output schema.
    pub output_retries: u32,
    /// Base URLs; none means `$OLLAMA_HOST`, else [`crate::backend::DEFAULT_OLLAMA_HOST`].
    pub backends: Vec<String>,
    /// The environment variable holding a bearer key.
    pub api_key_env: Option<String>,
    /// Requests in flight at once, per backend.
    pub workers: Workers,
    /// One attempt, from connecting to the last byte of the answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// Write JSONL results in input order.
    pub ordered: bool,
    /// Check the backends and their models before reading input.
    pub preflight: bool,
    /// After a signal, how long in-flight requests may take.
    pub grace: Duration,
    pub max_line_bytes: usize,
    pub max_response_bytes: usize,
    pub shard: Option<Shard>,
    /// The Parquet results file, or a dataset directory when the path ends in `/`.
    pub results: Option<PathBuf>,
    /// What to do with existing outputs.
    pub existing: OutputMode,
    /// Resume a results file made with other settings (recorded in it).
    pub allow_config_change: bool,
    pub keep_raw: bool,
    pub checkpoint_rows: u64,
    pub checkpoint_interval: Duration,
    /// Row groups that seal a part of a dataset output (`results` ending in `/`).
    pub part_row_groups: usize,
    pub codec: Codec,
    /// Object storage: how long an outage is ridden out, how long a shard's lease lasts.
    pub store: StoreSettings,
    /// A pipeline's passthrough and output columns.
    pub extras: ExtraColumns,
    /// A JSONL output file (JSONL to standard output is the caller's writer).
    pub jsonl_file: Option<PathBuf>,
    pub errors_file: Option<PathBuf>,
    pub stats_file: Option<PathBuf>,
    /// Keep a live-status file beside local Parquet results (`live_status`), which
    /// `batchflow status` reads.
    pub live_status: bool,
    /// Off a terminal, a progress log line this often.
    pub progress_interval: Duration,
    /// What a reload of the model, or a model split between CPU and GPU, does to the run.
    pub on_reload: OnReload,
    /// Ollama options (`num_ctx`, `temperature`, …) set on every request to Ollama's own API
    /// over the request's own, so that a run keeps one model configuration.
    pub ollama_options: Option<serde_json::Map<String, serde_json::Value>>,
    /// `keep_alive` set on every request to Ollama's own API, over the request's own.
    pub keep_alive: Option<serde_json::Value>,
    /// For a later stage of a pipeline: the stage its records come from and its filter.
    pub upstream: Option<String>,
    /// Serve the run's figures for Prometheus here (`GET /metrics`) while it runs.
    pub metrics: Option<SocketAddr>,
    /// How long the metrics endpoint stays up after the run, for a last scrape.
    pub metrics_linger: Duration,
    /// The pipeline file the run was read from, which no output may name.
    pub pipeline_file: Option<PathBuf>,
    /// How the user named each knob, for messages.
    pub knobs: Knobs,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            input: Input::Stdin,
            records: None,
            model: None,
            output_retries: 2,
            backends: Vec::new(),
            api_key_env: None,
            workers: Workers::Fixed(8),
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            ordered: false,
            preflight: true,
            grace: Duration::from_secs(30),
            max_line_bytes: 16 << 20,
            max_response_bytes: 64 << 20,
            shard: None,
            results: None,
            existing: OutputMode::New,
            allow_config_change: false,
            keep_raw: true,
            checkpoint_rows: 10_000,
            checkpoint_interval: Duration::from_secs(30),
            part_row_groups: dataset::PART_ROW_GROUPS,
            codec: Codec::default(),
            store: StoreSettings::default(),
            extras: ExtraColumns::default(),
            jsonl_file: None,
            errors_file: None,
            stats_file: None,
            live_status: true,
            progress_interval: Duration::from_secs(10),
            on_reload: OnReload::default(),
            ollama_options: None,
            keep_alive: None,
            upstream: None,
            metrics: None,
            metrics_linger: Duration::ZERO,
            pipeline_file: None,
            knobs: Knobs::flags(),
        }
    }
}

/// Where a run's messages go to a person.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console {
    /// Only warnings and errors: no progress, no summary.
    pub quiet: bool,
    pub stderr_is_terminal: bool,
}

impl RunOptions {
    /// The output schema of the records, if they ask for structured output.
    pub fn output_schema(&self) -> Option<&Arc<OutputSchema>> {
        self.records
            .as_deref()
            .and_then(|shape| shape.output.as_ref())
    }
}

/// `--workers`: a fixed count or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Fixed(u32),
    Auto,
}

impl Workers {
    /// The most concurrency `auto` will try, per backend.
    pub const AUTO_MAX: u32 = 256;

    pub fn parse(text: &str) -> Result<Workers, String> {
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        match text.trim().parse::<u32>() {
            Ok(count @ 1..=4096) => Ok(Workers::Fixed(count)),
            _ => Err(format!(
                "{text:?} is not a number from 1 to 4096 or \"auto\""
            )),
        }
    }

    /// The fixed count, or `default` for `auto`.
    pub fn count_or(self, default: u32) -> u32 {
        match self {
            Workers::Fixed(count) => count,
            Workers::Auto => default,
        }
    }
}

impl std::fmt::Display for Workers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workers::Fixed(count) => write!(formatter, "{count}"),
            Workers::Auto => formatter.write_str("auto"),
        }
    }
}

/// A duration as plain seconds (`90`, `0.5`) or with units (`90s`, `10m`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"));
    }
    humantime::parse_duration(text.trim()).map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_or_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn workers_are_a_bounded_count_or_auto() {
        assert_eq!(Workers::parse("auto"), Ok(Workers::Auto));
        assert_eq!(Workers::parse(" 3 "), Ok(Workers::Fixed(3)));
        assert!(Workers::parse("0").is_err());
        assert_eq!(Workers::Fixed(8).to_string(), "8");
    }
}
