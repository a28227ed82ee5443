//! The command line (clap): flags, subcommands and their value parsers, and how they become the
//! library's options (`options.rs` here). Only the binary sees this folder; the library never
//! names a clap type. Every default shown in `--help` comes from the library's
//! `RunOptions::default()` or `MockConfig::default()`.

mod options;
mod serve;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::options::{RunOptions, Workers, parse_duration};
use batchflow::source::Shard;
use batchflow::storage::StoreSettings;
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
pub use serve::ServeArgs;

const EXIT_CODES: &str = "\
Exit codes (what the results hold at the end, rows kept by --resume included):
  0    every row is ok
  1    the run finished, but some rows are errors: failed (a request sent that ended in
       error) or invalid (an input line that could not become a request)
  2    usage, configuration or I/O error (bad flag, backend unreachable, unknown model,
       unreadable input)
  130  interrupted (SIGINT/SIGTERM); results finished before the stop are written

Examples:
  cat requests.jsonl | batchflow --workers 8 > results.jsonl
  batchflow requests.jsonl --model llama3.2 --ordered > results.jsonl
  batchflow requests.jsonl --output results.parquet      # crash-safe Parquet results
  batchflow requests.jsonl --output results.parquet --resume   # continue after a crash
  batchflow status results.parquet
  batchflow verify results/ --input requests.jsonl   # one row per input line, across shards
  batchflow demo                  # a sample batch against a built-in mock server";

const VERIFY_EXIT_CODES: &str = "\
Standard output gets one JSON line per problem:
  {\"custom_id\":\"a\",\"line\":3,\"problem\":\"missing\"}
  {\"custom_id\":\"b\",\"line\":4,\"problem\":\"duplicated\",\"count\":2,\"files\":[\"s0.parquet\",\"s1.parquet\"]}
  {\"custom_id\":\"c\",\"line\":9,\"problem\":\"unexpected\",\"file\":\"s2.parquet\"}
(line: the input's line or row; for an unexpected row, its request_line). A summary line goes
to standard error.

Exit codes:
  0    every input line has exactly one row
  1    some lines have no row or several, or some rows belong to no line (listed)
  2    usage or I/O error (unreadable input, a file that is not a batchflow results file)

Examples:
  batchflow verify results.parquet --input requests.jsonl
  batchflow verify /results/dataset/ --input requests.jsonl --model llama3.2
  batchflow verify /results/dataset/ --input pipeline.toml";

/// Run large batches of independent LLM requests against Ollama or any OpenAI-compatible
/// server, keeping every parallel slot of the server busy.
///
/// Reads OpenAI Batch API request lines ({"custom_id", "method": "POST", "url", "body"}) from
/// INPUT or standard input and writes one OpenAI Batch output line per input line to standard
/// output, in completion order (or input order with --ordered). Logs go to standard error.
#[derive(Debug, Parser)]
#[command(name = "batchflow", version, after_help = EXIT_CODES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

// Parsed once per process: the size of a variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve an Ollama-compatible mock API on 127.0.0.1 (for tests, benchmarks and dry runs
    /// without a GPU). Prints its URL on standard output, then serves until interrupted.
    MockServer(MockArgs),
    /// Run a built-in sample batch against a built-in mock server: no Ollama needed.
    Demo(DemoArgs),
    /// Run a pipeline file (TOML): source, request template, backend and sinks in one place.
    Run(PipelineRunArgs),
    /// Check a pipeline file: fields and types, template columns against the source, the output
    /// schema, and (unless --offline) the backend and its model. Lists every problem.
    Validate(ValidateArgs),
    /// Measure throughput on a sample of the input at 1, 2, 4, 8, … workers until it stops
    /// rising, and recommend --workers (and OLLAMA_NUM_PARALLEL when the server is the limit).
    /// The input is a JSONL or Parquet file, a pipe, stdin, or a pipeline file (`.toml`: its
    /// source, template and backend, or --mock).
    Tune(TuneArgs),
    /// Show what a Parquet results file (or each shard of a dataset directory) holds (rows
    /// done, ok, failed) and whether it is complete or resumable, without running anything.
    Status(StatusArgs),
    /// Prove that results hold exactly one row for every input line: a results file, or a
    /// dataset directory of them (the shards and parts of one input). Lists every line with
    /// no row or several, and every row no line owns; exits 1 if there is any.
    #[command(after_help = VERIFY_EXIT_CODES)]
    Verify(VerifyArgs),
    /// Serve the OpenAI Files and Batches API (under /v1) in front of the backends: upload a
    /// JSONL file, create a batch, poll it, download its output and error files, with the
    /// engine's concurrency, retries and crash-safe results underneath.
    Serve(ServeArgs),
}

/// Flags of `run FILE`. Command-line values win over the file's.
#[derive(Debug, Clone, Args)]
pub struct PipelineRunArgs {
    /// The pipeline file.
    #[arg(value_name = "PIPELINE.toml")]
    pub file: PathBuf,

    /// Override a value of the file, e.g. `--set backend.workers=16` or
    /// `--set request.model=qwen3:8b` (repeatable; TOML values, or plain text).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub set: Vec<String>,

    /// Continue the pipeline's Parquet results file.
    #[arg(long)]
    pub resume: bool,

    /// With --resume, also send again the requests whose rows are errors.
    #[arg(long, requires = "resume")]
    pub retry_errors: bool,

    /// Replace an existing results file (and JSONL and error files).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,

    /// Print the first few rendered requests and the results columns, without calling the
    /// backend.
    #[arg(long)]
    pub dry_run: bool,

    /// Keep the run's figures in this JSON file (overrides sink.stats).
    #[arg(long, value_name = "FILE.json")]
    pub stats: Option<PathBuf>,

    /// Write every request that ends in error, and every invalid input line, to this JSONL
    /// file (overrides sink.errors).
    #[arg(long, value_name = "FILE.jsonl")]
    pub errors: Option<PathBuf>,

    /// With --resume, continue a results file made with another model, template, options or
    /// output schema (the change is recorded in the file).
    #[arg(long, requires = "resume")]
    pub allow_config_change: bool,

    /// When standard error is not a terminal, log a progress line this often.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().progress_interval), value_parser = flag_duration, value_name = "DURATION")]
    pub progress_interval: FlagDuration,

    /// Use the built-in mock server as the backend.
    #[arg(long)]
    pub mock: bool,

    /// Process only shard I of N (see the main command's --shard).
    #[arg(long, value_name = "I/N", value_parser = Shard::parse)]
    pub shard: Option<Shard>,

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

    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `tune`: the run flags (backend, model, timeouts…) plus the sample's size.
#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Requests sent at each worker count: the first ones of the input (JSONL, Parquet, or a
    /// pipeline's records).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub sample: usize,

    /// The most workers to try.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_workers: usize,
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
}

/// Flags of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// A results file or dataset directory written with --output, here or on object storage
    /// (s3://bucket/run/). Parts that cannot be read are named, and the exit status is 2.
    #[arg(value_name = "RESULTS.parquet|DIR")]
    pub path: PathBuf,
}

/// Flags of `verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// A results file written with --output, or a directory of them: every `*.parquet` file
    /// directly inside it (hidden files and `*.tmp` staging files are not read). Either may be
    /// on object storage (s3://bucket/run/, each file downloaded in turn).
    #[arg(value_name = "RESULTS")]
    pub results: PathBuf,

    /// The input file the runs read: JSONL or Parquet requests (here or on object storage), or
    /// the pipeline file (`.toml`) they ran. It is read twice when there are problems to name,
    /// so not standard input.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,

    /// The --model the runs were given, if any: it decides whether a line without a model
    /// was a request or an invalid line.
    #[arg(short, long, value_name = "NAME")]
    pub model: Option<String>,

    /// The --max-line-bytes the runs were given: longer lines were invalid lines.
    #[arg(long, default_value_t = RunOptions::default().max_line_bytes, value_name = "BYTES")]
    pub max_line_bytes: usize,
}

/// Flags of a batch run.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("outputs").args(["output", "errors"]).multiple(true)))]
pub struct RunArgs {
    /// Input file: OpenAI Batch request lines (JSONL), or a Parquet file with columns
    /// custom_id, method, url, body (JSON text or a struct). `-` or nothing reads JSONL from
    /// standard input.
    #[arg(value_name = "INPUT")]
    pub input: Option<PathBuf>,

    /// Requests in flight at once, per backend: a number matching the server's parallel slots
    /// (OLLAMA_NUM_PARALLEL, summed over its loaded models), or `auto` to find it while running
    /// (it grows while latency stays flat and backs off when requests queue or get 503/429).
    #[arg(short, long, default_value_t = RunOptions::default().workers, value_parser = Workers::parse, value_name = "N|auto")]
    pub workers: Workers,

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

    /// Write results in input order (through a bounded reorder buffer) instead of completion
    /// order.
    #[arg(long)]
    pub ordered: bool,

    /// Skip the checks that the backend answers and has the model before reading input.
    #[arg(long)]
    pub no_preflight: bool,

    /// After SIGINT/SIGTERM, how long in-flight requests may take to finish. A second
    /// interrupt aborts at once.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().grace), value_parser = flag_duration, value_name = "DURATION")]
    pub grace: FlagDuration,

    /// Longer input lines are refused (with an error line) without being held in memory.
    #[arg(long, default_value_t = RunOptions::default().max_line_bytes, value_name = "BYTES")]
    pub max_line_bytes: usize,

    /// Larger response bodies are refused and recorded as `invalid_response`.
    #[arg(long, default_value_t = RunOptions::default().max_response_bytes, value_name = "BYTES")]
    pub max_response_bytes: usize,

    /// Write results to this Parquet file, checkpointed as it goes so that a crash loses at
    /// most the rows since the last checkpoint; readers opening it at any moment see the last
    /// checkpoint whole. A path ending in `/` names a dataset directory instead: part files
    /// `part-<i>-of-<n>-<seq>.parquet` (read with `DIR/*.parquet`), which --shard runs can
    /// share. Standard output then gets no JSONL unless --jsonl is given.
    #[arg(short, long, value_name = "RESULTS.parquet|DIR/")]
    pub output: Option<PathBuf>,

    /// Continue an existing --output file: keep its rows and send only the requests it lacks.
    #[arg(long, requires = "output")]
    pub resume: bool,

    /// With --resume, also send again the requests whose rows are errors (their old rows are
    /// dropped).
    #[arg(long, requires = "resume")]
    pub retry_errors: bool,

    /// Replace an existing --output or --errors file.
    #[arg(long, requires = "outputs", conflicts_with = "resume")]
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

    /// Leave the raw response body out of the results file.
    #[arg(long, requires = "output")]
    pub no_raw: bool,

    /// With --output, also write JSONL results to standard output.
    #[arg(long, requires = "output")]
    pub jsonl: bool,

    /// Keep the run's figures (counts, rates, ETA, tokens, latency, GPU) in this JSON file,
    /// rewritten atomically every 2 seconds and at the end.
    #[arg(long, value_name = "FILE.json")]
    pub stats: Option<PathBuf>,

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

    /// Process only shard I of N (`--shard 0/4`): the requests whose custom_id hashes to I.
    /// N machines given the same input and I = 0…N-1 split it exactly, without coordination;
    /// give each its own --output.
    #[arg(long, value_name = "I/N", value_parser = Shard::parse)]
    pub shard: Option<Shard>,

    /// Send the batch to a built-in mock server instead of a real one (a dry run without a
    /// GPU). The mock has models llama3.2 and nomic-embed-text.
    #[arg(long, conflicts_with = "backend")]
    pub mock: bool,

    #[command(flatten)]
    pub store: StoreArgs,
}

/// Object-storage flags of a run writing a dataset to `s3://`, `gs://` or `az://`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Ride out an object-store outage this long (retries with exponential backoff) before
    /// the run stops, resumable, with exit code 2.
    #[arg(long, default_value_t = FlagDuration(StoreSettings::default().retry_for), value_parser = flag_duration, value_name = "DURATION")]
    pub store_retry_for: FlagDuration,

    /// A shard's lease on object storage lasts this long without renewal (renewed every
    /// third of it): another host takes over a shard whose writer went silent only after this.
    #[arg(long, default_value_t = FlagDuration(StoreSettings::default().lease_for), value_parser = flag_duration_at_least_a_second, value_name = "DURATION")]
    pub store_lease: FlagDuration,
}

impl StoreArgs {
    pub fn settings(&self) -> StoreSettings {
        StoreSettings {
            retry_for: self.store_retry_for.0,
            lease_for: self.store_lease.0,
        }
    }
}

/// Logging flags, shared by every command.
#[derive(Debug, Clone, Copy, Args)]
pub struct LogArgs {
    /// Only warnings and errors on standard error.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// More detail on standard error.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// Knobs of the mock server.
#[derive(Debug, Clone, Args)]
pub struct MockArgs {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = MockConfig::default().port)]
    pub port: u16,

    /// Requests served at once, like OLLAMA_NUM_PARALLEL.
    #[arg(long, env = "OLLAMA_NUM_PARALLEL", default_value_t = MockConfig::default().slots)]
    pub slots: usize,

    /// Requests that may wait for a slot before new ones get 503, like OLLAMA_MAX_QUEUE.
    #[arg(long, env = "OLLAMA_MAX_QUEUE", default_value_t = MockConfig::default().max_queue)]
    pub max_queue: usize,

    /// Time each request spends in its slot.
    #[arg(long, default_value_t = FlagDuration(MockConfig::default().latency), value_parser = flag_duration, value_name = "DURATION")]
    pub latency: FlagDuration,

    /// Random spread of the latency: 0.5 means uniform within ±50%.
    #[arg(long, default_value_t = MockConfig::default().latency_spread, value_parser = parse_fraction)]
    pub spread: f64,

    /// Seed for fault injection.
    #[arg(long, default_value_t = MockConfig::default().seed)]
    pub seed: u64,

    /// Fraction of requests answered HTTP 500.
    #[arg(long, default_value_t = MockConfig::default().faults.server_error, value_parser = parse_fraction, value_name = "FRACTION")]
    pub fail_500: f64,

    /// Fraction of requests answered HTTP 429 with Retry-After.
    #[arg(long, default_value_t = MockConfig::default().faults.rate_limited, value_parser = parse_fraction, value_name = "FRACTION")]
    pub fail_429: f64,

    /// Fraction of requests whose connection is cut mid-answer.
    #[arg(long, default_value_t = MockConfig::default().faults.reset, value_parser = parse_fraction, value_name = "FRACTION")]
    pub fail_reset: f64,

    /// Fraction of requests that hang (see --hang).
    #[arg(long, default_value_t = MockConfig::default().faults.hang, value_parser = parse_fraction, value_name = "FRACTION")]
    pub fail_hang: f64,

    /// Fraction of requests answered 200 with truncated JSON.
    #[arg(long, default_value_t = MockConfig::default().faults.truncated, value_parser = parse_fraction, value_name = "FRACTION")]
    pub fail_truncated: f64,

    /// Fraction of requests answered 200 with text that ignores the requested output schema.
    #[arg(long, default_value_t = MockConfig::default().faults.bad_output, value_parser = parse_fraction, value_name = "FRACTION")]
    pub fail_schema: f64,

    /// Retry-After sent with each 429.
    #[arg(long, default_value_t = FlagDuration(MockConfig::default().retry_after), value_parser = flag_duration, value_name = "DURATION")]
    pub retry_after: FlagDuration,

    /// How long a hanging request hangs.
    #[arg(long, default_value_t = FlagDuration(MockConfig::default().hang), value_parser = flag_duration, value_name = "DURATION")]
    pub hang: FlagDuration,

    /// Models the mock has (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = MockConfig::default().models
    )]
    pub models: Vec<String>,
}

/// Flags of the demo.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Requests in flight at once (1 to 4096, as for a run).
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub workers: u32,

    /// Write results in input order.
    #[arg(long)]
    pub ordered: bool,
}

/// A duration flag: read by [`parse_duration`] (seconds or units), shown in `--help` as
/// humantime writes it (`10m`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagDuration(pub Duration);

impl fmt::Display for FlagDuration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", humantime::format_duration(self.0))
    }
}

fn flag_duration(text: &str) -> Result<FlagDuration, String> {
    parse_duration(text).map(FlagDuration)
}

fn flag_duration_at_least_a_second(text: &str) -> Result<FlagDuration, String> {
    match parse_duration(text)? {
        duration if duration >= Duration::from_secs(1) => Ok(FlagDuration(duration)),
        _ => Err(format!("{text:?} is shorter than a second")),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a fraction between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_shows_the_librarys_defaults() {
        let defaults = RunOptions::default();
        let cli = Cli::try_parse_from(["batchflow"]).expect("parses");
        assert_eq!(cli.run.workers, defaults.workers);
        assert_eq!(cli.run.timeout.0, defaults.timeout);
        assert_eq!(cli.run.retry_base.0, defaults.retry.base_delay);
        assert_eq!(cli.run.checkpoint_rows, defaults.checkpoint_rows);
        assert_eq!(FlagDuration(Duration::from_secs(600)).to_string(), "10m");
    }

    #[test]
    fn the_demo_refuses_zero_workers_instead_of_hanging() {
        let error = Cli::try_parse_from(["batchflow", "demo", "-w", "0"]).expect_err("refused");
        assert!(error.to_string().contains("1..=4096"), "{error}");
        let cli = Cli::try_parse_from(["batchflow", "demo", "-w", "4096"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Demo(DemoArgs { workers: 4096, .. }))
        ));
    }

    #[test]
    fn fractions_are_bounded() {
        assert_eq!(parse_fraction("0.2"), Ok(0.2));
        assert!(parse_fraction("1.5").is_err());
    }

    #[test]
    fn subcommands_and_a_bare_input_both_parse() {
        let cli =
            Cli::try_parse_from(["batchflow", "in.jsonl", "-w", "3", "--ordered"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.run.workers, Workers::Fixed(3));
        let cli =
            Cli::try_parse_from(["batchflow", "mock-server", "--slots", "2"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::MockServer(MockArgs { slots: 2, .. }))
        ));
    }
}
