//! The command line (clap): flags, subcommands and their value parsers, and how they become the
//! library's options (`options.rs` here). Only the binary sees this folder; the library never
//! names a clap type. Every default shown in `--help` comes from the library's
//! `RunOptions::default()` or `MockConfig::default()`.

mod options;
mod records;
mod run;
mod serve;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::options::{RunOptions, parse_duration};
use batchflow::storage::StoreSettings;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
pub use records::folder_of_saved;
pub use run::{Given, PipelineRunArgs, PlanArgs, RunArgs, RunKnobs, TuneArgs, ValidateArgs};
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
to standard error. With a pipeline of stages (--input a .toml with [[stage]] tables), RESULTS is
the folder of every stage's results; each stage is checked, the first against the input, a later
one against the rows of the stage it reads that pass its `where` (one row each, no other), and
each problem and summary names its stage (\"stage\":\"extract\").

Exit codes:
  0    every input line has exactly one row
  1    some lines have no row or several, or some rows belong to no line (listed)
  2    usage or I/O error (unreadable input, a file that is not a batchflow results file)

Examples:
  batchflow verify results.parquet --input requests.jsonl
  batchflow verify /results/dataset/ --input requests.jsonl --model llama3.2
  batchflow verify /results/dataset/ --input pipeline.toml
  batchflow verify results/ --input pipelines/screen-then-extract.toml";

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

impl Cli {
    /// Parses the command line, noting which flags it gave (a flag given wins over a pipeline
    /// file's value; one left at its default does not), and refusing what clap alone cannot.
    pub fn parse_noting_given() -> Cli {
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
        match (&mut cli.command, matches.subcommand()) {
            (None, _) => {
                cli.run.given = Given::from_matches(&matches);
                if let Some(problem) = cli.run.usage_problem() {
                    Cli::command()
                        .error(clap::error::ErrorKind::MissingRequiredArgument, problem)
                        .exit();
                }
            }
            (Some(Command::Run(args)), Some((_, given))) => {
                args.given = Given::from_matches(given);
            }
            (Some(Command::Tune(args)), Some((_, given))) => {
                args.given = Given::from_matches(given);
            }
            (Some(Command::Plan(args)), Some((_, given))) => {
                args.probe.given = Given::from_matches(given);
            }
            (Some(Command::Validate(args)), Some((_, given))) => {
                args.given = Given::from_matches(given);
            }
            _ => {}
        }
        cli
    }
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
    /// Know before you start: count the input, probe the server at rising concurrency on the
    /// input's first requests, and project the run (requests, prompt and completion tokens,
    /// recommended --workers, wall time with a range), with a check and its fix for what would
    /// slow it (one slot, a CPU/GPU split, prompts over their context, varying load options,
    /// keep_alive). Takes the run's input, records and backend flags; --output keeps the
    /// probe's results for the run.
    Plan(PlanArgs),
    /// Measure throughput on a sample of the input at 1, 2, 4, 8, … workers until it stops
    /// rising, and recommend --workers (and OLLAMA_NUM_PARALLEL when the server is the limit).
    /// The input is a JSONL or Parquet file, a pipe, stdin, or a pipeline file (`.toml`: its
    /// source, template and backend, or --mock).
    Tune(TuneArgs),
    /// Show what a Parquet results file (or each shard of a dataset directory) holds (rows
    /// done, ok, failed) and whether it is complete or resumable, without running anything.
    /// A folder of stage results, or a pipeline file of stages, shows each stage's.
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

/// Flags of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// A results file or dataset directory written with --output, here or on object storage
    /// (s3://bucket/run/). Parts that cannot be read are named, and the exit status is 2. A
    /// folder of plain results files (a pipeline's stages: screen.parquet, extract.parquet)
    /// shows each as a stage, after the stage it reads; a pipeline file (`.toml`) shows the
    /// results it writes, each stage's in the file's order.
    #[arg(value_name = "RESULTS.parquet|DIR|PIPELINE.toml")]
    pub path: PathBuf,
}

/// Flags of `verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// A results file written with --output, or a directory of them: every `*.parquet` file
    /// directly inside it (hidden files and `*.tmp` staging files are not read). Either may be
    /// on object storage (s3://bucket/run/, each file downloaded in turn). With a pipeline of
    /// stages as --input, the folder of every stage's results (its sink.parquet).
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

    /// Time a model takes to load: waited by its first request and by each request that asks
    /// for another num_ctx than the model was loaded with (as Ollama reloads it), and given
    /// as that reply's load_duration.
    #[arg(long, default_value_t = FlagDuration(MockConfig::default().load_delay), value_parser = flag_duration, value_name = "DURATION")]
    pub load_delay: FlagDuration,

    /// Share of each loaded model that /api/ps reports on the CPU (size_vram below size), to
    /// simulate a model split between CPU and GPU.
    #[arg(long, default_value_t = MockConfig::default().cpu_share, value_parser = parse_fraction, value_name = "FRACTION")]
    pub cpu_share: f64,

    /// Answer any model name too, listing each one asked for beside --models (as --mock does).
    #[arg(long)]
    pub any_model: bool,
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
        assert_eq!(cli.run.knobs.workers, defaults.workers);
        assert_eq!(cli.run.knobs.backend.timeout.0, defaults.timeout);
        assert_eq!(
            cli.run.knobs.backend.retry_base.0,
            defaults.retry.base_delay
        );
        assert_eq!(
            cli.run.knobs.output.checkpoint_rows,
            defaults.checkpoint_rows
        );
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
        assert_eq!(cli.run.knobs.workers, batchflow::options::Workers::Fixed(3));
        let cli =
            Cli::try_parse_from(["batchflow", "mock-server", "--slots", "2"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::MockServer(MockArgs { slots: 2, .. }))
        ));
    }
}
