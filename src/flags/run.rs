//! The flags of a batch run, in groups that each command takes whole where it means
//! something: the main command and `run FILE` take every run knob ([`RunKnobs`]), `tune` the
//! input, records and backend flags, `validate` the backend flags. The same flag means the same
//! thing everywhere; on `run FILE` a flag given wins over the file's value ([`Given`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use batchflow::options::{RunOptions, Workers};
use batchflow::source::Shard;
use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use super::{FlagDuration, StoreArgs, flag_duration};

/// Flags of a batch run (the main command).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Input file: OpenAI Batch request lines (JSONL), or a Parquet file with columns
    /// custom_id, method, url, body (JSON text or a struct). `-` or nothing reads JSONL from
    /// standard input.
    #[arg(value_name = "INPUT")]
    pub input: Option<PathBuf>,

    #[command(flatten)]
    pub records: RecordArgs,

    #[command(flatten)]
    pub knobs: RunKnobs,

    /// The flags given on the command line (filled from clap's matches after parsing).
    #[arg(skip)]
    pub given: Given,
}

impl RunArgs {
    /// What clap cannot say of the main command alone (the results flags are shared with
    /// `run FILE`, whose file may name the results): a flag that needs --output without it.
    pub fn usage_problem(&self) -> Option<String> {
        let output = &self.knobs.output;
        if output.output.is_some() {
            return None;
        }
        let needs_output = [
            (output.resume, "--resume"),
            (output.no_raw, "--no-raw"),
            (output.jsonl, "--jsonl"),
        ];
        if let Some((_, flag)) = needs_output.iter().find(|(set, _)| *set) {
            return Some(format!(
                "{flag} needs --output RESULTS.parquet (the results file it applies to)"
            ));
        }
        (output.overwrite && output.errors.is_none())
            .then(|| "--overwrite needs --output or --errors (the file it replaces)".to_owned())
    }
}

/// Records (any JSONL or Parquet rows) shaped into requests on the command line, as a
/// pipeline file's `[source]` and `[request]` would.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Records (instead of OpenAI Batch request lines)")]
pub struct RecordArgs {
    /// Read INPUT as records and send this prompt for each, its `{{column}}` placeholders
    /// filled from the record (`{{name}}`, `{{address.city}}`), e.g.
    /// `--prompt 'Screen {{name}}: {{bio}}' --model qwen2.5:7b`.
    #[arg(long, value_name = "TEMPLATE")]
    pub prompt: Option<String>,

    /// A system message before each prompt (a template too).
    #[arg(long, value_name = "TEMPLATE", requires = "prompt")]
    pub system: Option<String>,

    /// Ask for structured output following this JSON schema (an object schema): each
    /// property becomes a typed column of the results.
    #[arg(long, value_name = "FILE.json", requires = "prompt")]
    pub schema: Option<PathBuf>,

    /// The column holding each record's id (its custom_id). Without it, an id is made from
    /// the record's content.
    #[arg(long, value_name = "COLUMN", requires = "prompt")]
    pub id_column: Option<String>,

    /// Columns copied from each record into the results (repeatable, or comma-separated).
    #[arg(
        long,
        value_name = "COLUMN",
        value_delimiter = ',',
        requires = "prompt"
    )]
    pub passthrough: Vec<String>,

    /// The API each request goes to: /api/chat (default), /api/generate, /api/embed,
    /// /v1/chat/completions, /v1/completions or /v1/embeddings.
    #[arg(long, value_name = "PATH", requires = "prompt")]
    pub endpoint: Option<String>,

    /// Write the pipeline file these flags describe (records, request, backend, results) and
    /// run it; `batchflow run FILE.toml` runs it again.
    #[arg(long, value_name = "FILE.toml", requires = "prompt")]
    pub save_pipeline: Option<PathBuf>,
}

/// Every knob of a run: the main command's and `run FILE`'s.
#[derive(Debug, Clone, Args)]
pub struct RunKnobs {
    /// Requests in flight at once, per backend: a number matching the server's parallel slots
    /// (OLLAMA_NUM_PARALLEL, summed over its loaded models), or `auto` to find it while running
    /// (it grows while latency stays flat and backs off when requests queue or get 503/429).
    #[arg(short, long, default_value_t = RunOptions::default().workers, value_parser = Workers::parse, value_name = "N|auto")]
    pub workers: Workers,

    /// Process only shard I of N (`--shard 0/4`): the requests whose custom_id hashes to I.
    /// N machines given the same input and I = 0…N-1 split it exactly, without coordination;
    /// give each its own --output.
    #[arg(long, value_name = "I/N", value_parser = Shard::parse)]
    pub shard: Option<Shard>,

    /// Longer input lines are refused (with an error line) without being held in memory.
    #[arg(long, default_value_t = RunOptions::default().max_line_bytes, value_name = "BYTES")]
    pub max_line_bytes: usize,

    /// After SIGINT/SIGTERM, how long in-flight requests may take to finish. A second
    /// interrupt aborts at once.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().grace), value_parser = flag_duration, value_name = "DURATION")]
    pub grace: FlagDuration,

    /// What a reload of the model mid-run (or a model split between CPU and GPU) does: `warn`
    /// says so on stderr; `stop` also stops the run, resumable, with exit status 2.
    #[arg(long, value_enum, default_value_t = OnReloadFlag::Warn, value_name = "ACTION")]
    pub on_reload: OnReloadFlag,

    /// Print the first few requests as they would be sent (and, with records, the results'
    /// columns), without calling the backend.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub backend: BackendArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub watch: WatchArgs,

    #[command(flatten)]
    pub store: StoreArgs,
}

/// Which backend, which model, and how requests to it are bounded and retried.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Backend")]
pub struct BackendArgs {
    /// Ollama options set on every request to Ollama's own API (/api/…), over the request's
    /// own, e.g. `--options '{"num_ctx": 8192, "temperature": 0}'`: one model configuration
    /// for the whole run, since each change of a load option (num_ctx, num_gpu, …) reloads it.
    #[arg(long, value_name = "JSON", value_parser = ollama_options)]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,

    /// keep_alive set on every request to Ollama's own API, over the request's own: how long
    /// the model stays loaded after a request (`1h`, `30m`, or -1 for ever).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub keep_alive: Option<String>,

    /// Sets `model` in every request body, replacing any model the line names.
    #[arg(short, long, value_name = "NAME")]
    pub model: Option<String>,

    /// Server base URL: `host`, `host:port` or `http://host:port[/prefix]`.
    /// Default: $OLLAMA_HOST, else 127.0.0.1:11434. Each line's `url` path is appended.
    /// Repeat it to spread the batch over several servers (each gets --workers).
    #[arg(short, long, value_name = "URL")]
    pub backend: Vec<String>,

    /// Name of an environment variable holding an API key, sent as a bearer token.
    /// The key itself is never printed or logged.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,

    /// Send the batch to a built-in mock server instead of a real one (a dry run without a
    /// GPU). The mock answers any model the batch names, needs no API key, and answers a
    /// requested output schema with JSON that follows it.
    #[arg(long, conflicts_with = "backend")]
    pub mock: bool,

    /// Limit for one attempt of one request, from connecting to the last byte of the answer
    /// (seconds, or a duration such as `90s`, `10m`). LLM calls on CPU can take minutes.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().timeout), value_parser = flag_duration, value_name = "DURATION")]
    pub timeout: FlagDuration,

    /// Limit for opening a connection.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().connect_timeout), value_parser = flag_duration, value_name = "DURATION")]
    pub connect_timeout: FlagDuration,

    /// Attempts after the first, for connection errors, timeouts, 429, 500, 502, 503, 504 and
    /// malformed answers. Other 4xx answers are never retried.
    #[arg(long, default_value_t = RunOptions::default().retry.max_retries, value_name = "N")]
    pub retries: u32,

    /// First backoff's upper bound; it doubles per failure (full jitter). A server's
    /// Retry-After takes precedence.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().retry.base_delay), value_parser = flag_duration, value_name = "DURATION")]
    pub retry_base: FlagDuration,

    /// Longest backoff between two attempts.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().retry.max_delay), value_parser = flag_duration, value_name = "DURATION")]
    pub retry_max: FlagDuration,

    /// Larger response bodies are refused and recorded as `invalid_response`.
    #[arg(long, default_value_t = RunOptions::default().max_response_bytes, value_name = "BYTES")]
    pub max_response_bytes: usize,

    /// Skip the checks that the backend answers and has the model before reading input.
    #[arg(long)]
    pub no_preflight: bool,
}

/// Where results go and how an existing results file is treated.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Results")]
pub struct OutputArgs {
    /// Write results to this Parquet file, checkpointed as it goes so that a crash loses at
    /// most the rows since the last checkpoint; readers opening it at any moment see the last
    /// checkpoint whole. A path ending in `/` names a dataset directory instead: part files
    /// `part-<i>-of-<n>-<seq>.parquet` (read with `DIR/*.parquet`), which --shard runs can
    /// share. Standard output then gets no JSONL unless --jsonl is given.
    #[arg(short, long, value_name = "RESULTS.parquet|DIR/")]
    pub output: Option<PathBuf>,

    /// Continue an existing results file (--output, or the pipeline's sink): keep its rows and
    /// send only the requests it lacks.
    #[arg(long)]
    pub resume: bool,

    /// With --resume, also send again the requests whose rows are errors (their old rows are
    /// dropped).
    #[arg(long, requires = "resume")]
    pub retry_errors: bool,

    /// With --resume, once the whole input was read, drop the results' rows whose custom_id
    /// (or invalid line) the input no longer has, such as the old rows of edited records. Not
    /// for a dataset on object storage.
    #[arg(long, requires = "resume")]
    pub prune: bool,

    /// Replace an existing --output or --errors file.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,

    /// Write every request that ends in error, and every invalid input line, to this JSONL
    /// file as OpenAI Batch output lines (beside --output or JSONL on standard output). With
    /// --resume it holds exactly the results file's error rows.
    #[arg(long, value_name = "FILE.jsonl")]
    pub errors: Option<PathBuf>,

    /// With --resume, continue a results file made with another model, template, options or
    /// output schema; the change is recorded in the file. Without it such a resume is refused.
    #[arg(long, requires = "resume")]
    pub allow_config_change: bool,

    /// With --output, also write JSONL results to standard output.
    #[arg(long)]
    pub jsonl: bool,

    /// Leave the raw response body out of the results file.
    #[arg(long)]
    pub no_raw: bool,

    /// Write results in input order (through a bounded reorder buffer) instead of completion
    /// order.
    #[arg(long)]
    pub ordered: bool,

    /// Checkpoint the results file after this many new rows (or 8 MiB of them)...
    #[arg(long, default_value_t = RunOptions::default().checkpoint_rows, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_rows: u64,

    /// ...or after this long, whichever comes first.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().checkpoint_interval), value_parser = flag_duration, value_name = "DURATION")]
    pub checkpoint_secs: FlagDuration,

    /// In a dataset directory (--output DIR/), start a new part file after this many row
    /// groups (checkpoints), or once a part holds 8 MiB.
    #[arg(long, default_value_t = RunOptions::default().part_row_groups, value_name = "GROUPS", value_parser = clap::value_parser!(u64).range(1..=4096).map(|groups| groups as usize))]
    pub part_row_groups: usize,
}

/// Figures of a run while it goes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Watching")]
pub struct WatchArgs {
    /// Keep the run's figures (counts, rates, ETA, tokens, latency, GPU) in this JSON file,
    /// rewritten atomically every 2 seconds and at the end.
    #[arg(long, value_name = "FILE.json")]
    pub stats: Option<PathBuf>,

    /// Keep no live-status file beside the results. By default a run with local Parquet
    /// results keeps `.<name>.live.json` beside a file (`.part-<i>-of-<n>.live.json` in a
    /// dataset folder), rewritten every second, from which `batchflow status` tells a running
    /// run (with its progress, rate and ETA) from a stopped or finished one.
    #[arg(long)]
    pub no_live_status: bool,

    /// When standard error is not a terminal, log a progress line this often.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().progress_interval), value_parser = flag_duration, value_name = "DURATION")]
    pub progress_interval: FlagDuration,

    /// Serve the run's figures for Prometheus at http://ADDR/metrics while it runs (requests
    /// by outcome, retries by cause, in flight, worker limit, latency, tokens, backend health,
    /// GPU memory), e.g. `127.0.0.1:9464`; port 0 picks a free one (logged). An address in use
    /// stops the run before its first request.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Keep the metrics endpoint up this long after the run (with the final figures and
    /// batchflow_run_finished 1), for a last scrape; an interrupt ends it sooner.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().metrics_linger), value_parser = flag_duration, value_name = "DURATION", requires = "metrics")]
    pub metrics_linger: FlagDuration,
}

/// Flags of `run FILE`: every run knob; one given on the command line wins over the file.
#[derive(Debug, Clone, Args)]
pub struct PipelineRunArgs {
    /// The pipeline file.
    #[arg(value_name = "PIPELINE.toml")]
    pub file: PathBuf,

    /// Override a value of the file, e.g. `--set backend.workers=16` or
    /// `--set request.model=qwen3:8b` (repeatable; TOML values, or plain text).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub set: Vec<String>,

    #[command(flatten)]
    pub knobs: RunKnobs,

    /// The flags given on the command line (filled from clap's matches after parsing).
    #[arg(skip)]
    pub given: Given,
}

/// Flags of `tune`: the input (requests, records with --prompt, or a pipeline file), the
/// backend, and the measurement's size.
#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    /// The input: OpenAI Batch request lines (JSONL or Parquet), records with --prompt, a
    /// pipeline file (`.toml`: its source, template and backend), or `-` / nothing for
    /// standard input.
    #[arg(value_name = "INPUT|PIPELINE.toml")]
    pub input: Option<PathBuf>,

    #[command(flatten)]
    pub records: RecordArgs,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// Longer input lines are refused without being held in memory.
    #[arg(long, default_value_t = RunOptions::default().max_line_bytes, value_name = "BYTES")]
    pub max_line_bytes: usize,

    /// Requests sent at each worker count: the next ones of the input (never one twice).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub sample: usize,

    /// The most workers to try.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_workers: usize,

    #[arg(skip)]
    pub given: Given,
}

/// Flags of `plan`: the probe's, plus where to keep its results and how to print.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub probe: TuneArgs,

    /// Keep the probe's results in this results file (as a run's --output): the run that
    /// follows, with --resume, does not send those requests again.
    #[arg(short, long, value_name = "RESULTS.parquet|DIR/")]
    pub output: Option<PathBuf>,

    /// Print the plan as one JSON object (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Flags of `validate FILE`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The pipeline file.
    #[arg(value_name = "PIPELINE.toml")]
    pub file: PathBuf,

    /// Override a value of the file, as with `run`.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub set: Vec<String>,

    /// Do not contact the backend.
    #[arg(long)]
    pub offline: bool,

    #[command(flatten)]
    pub backend: BackendArgs,

    #[arg(skip)]
    pub given: Given,
}

/// The flags a command line gave (or their environment variables), by clap id: a flag left
/// at its default does not override a pipeline file's value.
#[derive(Debug, Clone, Default)]
pub struct Given {
    ids: BTreeSet<String>,
    /// Every flag counts as given: a run with no file to lay them over.
    all: bool,
}

impl Given {
    pub fn all() -> Given {
        Given {
            ids: BTreeSet::new(),
            all: true,
        }
    }

    pub fn from_matches(matches: &ArgMatches) -> Given {
        let ids = matches
            .ids()
            .filter(|id| {
                matches!(
                    matches.value_source(id.as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .map(|id| id.as_str().to_owned())
            .collect();
        Given { ids, all: false }
    }

    pub fn has(&self, id: &str) -> bool {
        self.all || self.ids.contains(id)
    }
}

/// `--on-reload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnReloadFlag {
    Warn,
    Stop,
}

/// `--options`: a JSON object.
fn ollama_options(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(options)) => Ok(options),
        Ok(_) => Err("a JSON object is expected, e.g. '{\"num_ctx\": 8192}'".into()),
        Err(error) => Err(format!("not JSON: {error}")),
    }
}

/// `--keep-alive`: a number of seconds stays a number (Ollama reads -1 as for ever), anything
/// else the duration text Ollama parses.
pub fn keep_alive_value(text: &str) -> serde_json::Value {
    match text.trim().parse::<i64>() {
        Ok(seconds) => serde_json::Value::from(seconds),
        Err(_) => serde_json::Value::String(text.trim().to_owned()),
    }
}
