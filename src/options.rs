//! A run's options: every knob of a batch with its default, in one place ([`RunOptions`]), and
//! their resolution into the engine's [`RunConfig`]. The binary's flags, a pipeline file
//! (`config::Pipeline::apply`) and library callers all fill a `RunOptions` and resolve it here,
//! so the three give the same run. Precedence between them is the caller's: each lays its
//! values over the ones before (defaults, then a pipeline file, then flags).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::http::HttpBackendConfig;
use crate::backend::{DEFAULT_OLLAMA_HOST, parse_base_url};
use crate::engine::RunConfig;
use crate::error::Error;
use crate::paths::Knobs;
use crate::progress::{ProgressConfig, ProgressMode};
use crate::schema::OutputSchema;
use crate::sink::checkpoint::Codec;
use crate::sink::parquet::{OutputMode, ParquetOutput};
use crate::sink::results::ExtraColumns;
use crate::source::template::RecordShape;
use crate::source::{Input, Shard, SourceOptions};
use crate::stage::retry::RetryPolicy;
use crate::stage::{OutputCheck, StageConfig};

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
    /// Base URLs; none means `$OLLAMA_HOST`, else [`DEFAULT_OLLAMA_HOST`].
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
    /// The Parquet results file.
    pub results: Option<PathBuf>,
    /// What to do with existing outputs.
    pub existing: OutputMode,
    /// Resume a results file made with other settings (recorded in it).
    pub allow_config_change: bool,
    pub keep_raw: bool,
    pub checkpoint_rows: u64,
    pub checkpoint_interval: Duration,
    pub codec: Codec,
    /// A pipeline's passthrough and output columns.
    pub extras: ExtraColumns,
    /// A JSONL output file (JSONL to standard output is the caller's writer).
    pub jsonl_file: Option<PathBuf>,
    pub errors_file: Option<PathBuf>,
    pub stats_file: Option<PathBuf>,
    /// Off a terminal, a progress log line this often.
    pub progress_interval: Duration,
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
            codec: Codec::default(),
            extras: ExtraColumns::default(),
            jsonl_file: None,
            errors_file: None,
            stats_file: None,
            progress_interval: Duration::from_secs(10),
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

    /// The run these options describe. `backend_override` (the built-in mock's URL) beats
    /// [`RunOptions::backends`], which beat `OLLAMA_HOST`, which beats the default. `env` reads
    /// environment variables (a parameter, so that tests need not touch the process's).
    pub fn resolve(
        &self,
        console: Console,
        backend_override: Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<RunConfig, Error> {
        let addresses: Vec<String> = match backend_override {
            Some(address) => vec![address],
            None if !self.backends.is_empty() => self.backends.clone(),
            None => vec![
                env("OLLAMA_HOST")
                    .filter(|host| !host.trim().is_empty())
                    .unwrap_or_else(|| DEFAULT_OLLAMA_HOST.to_owned()),
            ],
        };
        let api_key = match &self.api_key_env {
            Some(name) => Some(env(name).filter(|key| !key.is_empty()).ok_or_else(|| {
                Error::ApiKeyMissing {
                    name: name.clone(),
                    knob: self.knobs.api_key_env.clone(),
                }
            })?),
            None => None,
        };
        let (workers, adaptive_max) = match self.workers {
            Workers::Fixed(count) => (count as usize, None),
            Workers::Auto => (1, Some(Workers::AUTO_MAX as usize)),
        };
        let backends = addresses
            .iter()
            .map(|address| {
                Ok(HttpBackendConfig {
                    base_url: parse_base_url(address)?,
                    api_key: api_key.clone(),
                    timeout: self.timeout,
                    connect_timeout: self.connect_timeout,
                    max_response_bytes: self.max_response_bytes,
                    pool_size: adaptive_max.unwrap_or(workers),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(RunConfig {
            input: self.input.clone(),
            source: SourceOptions {
                model_override: self.model.clone(),
                max_line_bytes: self.max_line_bytes,
                done: None,
                records: self.records.clone(),
                shard: self.shard,
                limit: None,
            },
            backends,
            preflight: self.preflight,
            stage: StageConfig {
                workers,
                adaptive_max,
                ordered: self.ordered,
                retry: self.retry,
                output: self.output_schema().map(|schema| OutputCheck {
                    schema: Arc::clone(schema),
                    retries: self.output_retries,
                }),
            },
            output: self.results.as_ref().map(|path| ParquetOutput {
                path: path.clone(),
                mode: self.existing,
                keep_raw: self.keep_raw,
                checkpoint_rows: usize::try_from(self.checkpoint_rows).unwrap_or(usize::MAX),
                checkpoint_interval: self.checkpoint_interval,
                extras: self.extras.clone(),
                codec: self.codec,
                allow_config_change: self.allow_config_change,
            }),
            jsonl_file: self.jsonl_file.clone(),
            errors_file: self.errors_file.clone(),
            existing_outputs: self.existing,
            pipeline_file: self.pipeline_file.clone(),
            knobs: self.knobs.clone(),
            progress: ProgressConfig {
                mode: if console.quiet {
                    ProgressMode::Off
                } else if console.stderr_is_terminal {
                    ProgressMode::Bar
                } else {
                    ProgressMode::Log {
                        interval: self.progress_interval,
                    }
                },
                stats_file: self.stats_file.clone(),
            },
            grace: self.grace,
        })
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
    fn backend_precedence_is_override_then_backends_then_ollama_host_then_default() {
        let env = |name: &str| (name == "OLLAMA_HOST").then(|| "gpu-box:9999".to_owned());
        let no_env = |_: &str| None;
        let console = Console::default();
        let url = |config: RunConfig| config.backends[0].base_url.clone();
        let defaults = RunOptions::default();
        let other = RunOptions {
            backends: vec!["other".into()],
            ..RunOptions::default()
        };
        assert_eq!(
            url(defaults.resolve(console, None, no_env).expect("ok")),
            "http://127.0.0.1:11434"
        );
        assert_eq!(
            url(defaults.resolve(console, None, env).expect("ok")),
            "http://gpu-box:9999"
        );
        assert_eq!(
            url(other.resolve(console, None, env).expect("ok")),
            "http://other:11434"
        );
        assert_eq!(
            url(other
                .resolve(console, Some("http://127.0.0.1:5".into()), env)
                .expect("ok")),
            "http://127.0.0.1:5"
        );
    }

    #[test]
    fn a_missing_api_key_variable_is_named_with_the_knob_that_named_it() {
        let options = RunOptions {
            api_key_env: Some("MY_KEY".into()),
            ..RunOptions::default()
        };
        let error = options
            .resolve(Console::default(), None, |_| None)
            .expect_err("missing");
        assert!(error.to_string().contains("MY_KEY"), "{error}");
        assert!(error.to_string().contains("--api-key-env"), "{error}");
        let under_a_pipeline = RunOptions {
            knobs: Knobs::pipeline(),
            ..options.clone()
        };
        let error = under_a_pipeline
            .resolve(Console::default(), None, |_| None)
            .expect_err("missing");
        assert!(error.to_string().contains("backend.api_key_env"), "{error}");
        let config = options
            .resolve(Console::default(), None, |_| Some("s3cret".into()))
            .expect("ok");
        assert_eq!(config.backends[0].api_key.as_deref(), Some("s3cret"));
    }

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
