//! The one place that knows precedence: built-in defaults, then the environment
//! (`OLLAMA_HOST`, the API key variable), then the command line. Produces the engine's
//! [`RunConfig`] and the mock's [`MockConfig`].

use crate::backend::http::HttpBackendConfig;
use crate::backend::{DEFAULT_OLLAMA_HOST, parse_base_url};
use std::sync::Arc;

use clap::Parser;

use crate::cli::{Cli, LogArgs, MockArgs, PipelineRunArgs, RunArgs, Workers};
use crate::config::{JsonlTarget, Pipeline};
use crate::engine::RunConfig;
use crate::error::Error;
use crate::mock::MockConfig;
use crate::mock::faults::FaultRates;
use crate::paths::Knobs;
use crate::progress::{ProgressConfig, ProgressMode};
use crate::sink::parquet::{OutputMode, ParquetOutput};
use crate::sink::results::ExtraColumns;
use crate::source::{Input, SourceOptions};
use crate::stage::OutputCheck;
use crate::stage::StageConfig;
use crate::stage::retry::RetryPolicy;

/// Where the run's output goes to a person: `--quiet`, and whether stderr is a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Console {
    pub log: LogArgs,
    pub stderr_is_terminal: bool,
}

/// Resolves a run's configuration. `backend_override` (the built-in mock's URL) beats
/// `--backend`, which beats `OLLAMA_HOST`, which beats the default. `env` reads environment
/// variables (a parameter so tests need not touch the process environment).
pub fn run_config(
    args: &RunArgs,
    console: Console,
    backend_override: Option<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<RunConfig, Error> {
    let addresses: Vec<String> = match backend_override {
        Some(address) => vec![address],
        None if !args.backend.is_empty() => args.backend.clone(),
        None => vec![
            env("OLLAMA_HOST")
                .filter(|host| !host.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_OLLAMA_HOST.to_owned()),
        ],
    };
    let api_key =
        match &args.api_key_env {
            Some(name) => Some(env(name).filter(|key| !key.is_empty()).ok_or_else(|| {
                Error::ApiKeyMissing {
                    name: name.clone(),
                    knob: "--api-key-env".into(),
                }
            })?),
            None => None,
        };
    let mode = if args.resume {
        OutputMode::Resume {
            retry_errors: args.retry_errors,
        }
    } else if args.overwrite {
        OutputMode::Overwrite
    } else {
        OutputMode::New
    };
    let (workers, adaptive_max) = match args.workers {
        Workers::Fixed(count) => (count as usize, None),
        Workers::Auto => (1, Some(Workers::AUTO_MAX as usize)),
    };
    Ok(RunConfig {
        input: Input::from_arg(args.input.clone()),
        source: SourceOptions {
            model_override: args.model.clone(),
            max_line_bytes: args.max_line_bytes,
            done: None,
            records: None,
            shard: args.shard,
            limit: None,
        },
        backends: addresses
            .iter()
            .map(|address| {
                Ok(HttpBackendConfig {
                    base_url: parse_base_url(address)?,
                    api_key: api_key.clone(),
                    timeout: args.timeout,
                    connect_timeout: args.connect_timeout,
                    max_response_bytes: args.max_response_bytes,
                    pool_size: adaptive_max.unwrap_or(workers),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?,
        preflight: !args.no_preflight,
        stage: StageConfig {
            workers,
            adaptive_max,
            ordered: args.ordered,
            retry: RetryPolicy {
                max_retries: args.retries,
                base_delay: args.retry_base,
                max_delay: args.retry_max,
                ..RetryPolicy::default()
            },
            output: None,
        },
        output: args.output.as_ref().map(|path| ParquetOutput {
            path: path.clone(),
            mode,
            keep_raw: !args.no_raw,
            checkpoint_rows: usize::try_from(args.checkpoint_rows).unwrap_or(usize::MAX),
            checkpoint_interval: args.checkpoint_secs,
            extras: Default::default(),
            codec: Default::default(),
            allow_config_change: args.allow_config_change,
        }),
        jsonl_file: None,
        errors_file: args.errors.clone(),
        existing_outputs: mode,
        pipeline_file: None,
        knobs: Knobs::flags(),
        progress: ProgressConfig {
            mode: if console.log.quiet {
                ProgressMode::Off
            } else if console.stderr_is_terminal {
                ProgressMode::Bar
            } else {
                ProgressMode::Log {
                    interval: args.progress_interval,
                }
            },
            stats_file: args.stats.clone(),
        },
        grace: args.grace,
    })
}

/// A pipeline's run: the pipeline's values laid over the command-line defaults, then the same
/// resolution as flags (so the flag mode and a pipeline give the same run), then what only a
/// pipeline has (record shaping, structured output, extra columns, compression).
pub fn pipeline_config(
    pipeline: &Pipeline,
    flags: &PipelineRunArgs,
    extras: ExtraColumns,
    console: Console,
    backend_override: Option<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<RunConfig, Error> {
    let mut args = Cli::try_parse_from(["batchflow"])
        .map_err(|error| Error::Internal(format!("default flags: {error}")))?
        .run;
    let backend = &pipeline.backend;
    args.input = pipeline.input.clone();
    args.model = pipeline.model_override.clone();
    args.backend = backend.url.iter().chain(&backend.urls).cloned().collect();
    args.api_key_env = backend.api_key_env.clone();
    args.workers = pipeline.workers.unwrap_or(args.workers);
    args.timeout = pipeline.timeout.unwrap_or(args.timeout);
    args.connect_timeout = pipeline.connect_timeout.unwrap_or(args.connect_timeout);
    args.retries = backend.retries.unwrap_or(args.retries);
    args.retry_base = pipeline.retry_base.unwrap_or(args.retry_base);
    args.retry_max = pipeline.retry_max.unwrap_or(args.retry_max);
    args.no_preflight = !backend.preflight.unwrap_or(true);
    args.ordered = pipeline.ordered;
    args.output = pipeline.parquet.clone();
    args.resume = flags.resume;
    args.retry_errors = flags.retry_errors;
    args.overwrite = flags.overwrite;
    args.checkpoint_rows = pipeline.checkpoint_rows.unwrap_or(args.checkpoint_rows);
    args.checkpoint_secs = pipeline.checkpoint_interval.unwrap_or(args.checkpoint_secs);
    args.no_raw = !pipeline.keep_raw;
    args.stats = flags.stats.clone().or_else(|| pipeline.stats.clone());
    args.errors = flags.errors.clone().or_else(|| pipeline.errors.clone());
    args.allow_config_change = flags.allow_config_change;
    args.progress_interval = flags.progress_interval;
    args.shard = flags.shard;
    let mut config =
        run_config(&args, console, backend_override, env).map_err(|error| match error {
            Error::ApiKeyMissing { name, .. } => Error::ApiKeyMissing {
                name,
                knob: "backend.api_key_env".into(),
            },
            other => other,
        })?;
    config.source.records = pipeline.shape.clone();
    config.pipeline_file = Some(flags.file.clone());
    config.knobs = Knobs::pipeline(flags.stats.is_some(), flags.errors.is_some());
    config.jsonl_file = match &pipeline.jsonl {
        Some(JsonlTarget::File(path)) => Some(path.clone()),
        Some(JsonlTarget::Stdout) | None => None,
    };
    config.stage.output = pipeline.output_schema().map(|schema| OutputCheck {
        schema: Arc::clone(schema),
        retries: pipeline.output_retries,
    });
    if let Some(output) = &mut config.output {
        output.extras = extras;
        output.codec = pipeline.codec;
    }
    Ok(config)
}

pub fn mock_config(args: &MockArgs) -> MockConfig {
    MockConfig {
        port: args.port,
        slots: args.slots.max(1),
        max_queue: args.max_queue,
        latency: args.latency,
        latency_spread: args.spread,
        faults: FaultRates {
            server_error: args.fail_500,
            rate_limited: args.fail_429,
            reset: args.fail_reset,
            hang: args.fail_hang,
            truncated: args.fail_truncated,
            bad_output: args.fail_schema,
        },
        seed: args.seed,
        retry_after: args.retry_after,
        hang: args.hang,
        models: args.models.clone(),
        ..MockConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    const CONSOLE: Console = Console {
        log: LogArgs {
            quiet: false,
            verbose: false,
        },
        stderr_is_terminal: false,
    };

    fn args(flags: &[&str]) -> RunArgs {
        let mut argv = vec!["batchflow"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).expect("flags parse").run
    }

    #[test]
    fn backend_precedence_is_flag_then_ollama_host_then_default() {
        let env = |name: &str| (name == "OLLAMA_HOST").then(|| "gpu-box:9999".to_owned());
        let no_env = |_: &str| None;
        let url = |config: RunConfig| config.backends[0].base_url.clone();
        assert_eq!(
            url(run_config(&args(&[]), CONSOLE, None, no_env).expect("ok")),
            "http://127.0.0.1:11434"
        );
        assert_eq!(
            url(run_config(&args(&[]), CONSOLE, None, env).expect("ok")),
            "http://gpu-box:9999"
        );
        assert_eq!(
            url(run_config(&args(&["--backend", "other"]), CONSOLE, None, env).expect("ok")),
            "http://other:11434"
        );
        assert_eq!(
            url(run_config(
                &args(&["--backend", "other"]),
                CONSOLE,
                Some("http://127.0.0.1:5".into()),
                env
            )
            .expect("ok")),
            "http://127.0.0.1:5"
        );
    }

    #[test]
    fn a_missing_api_key_variable_is_named() {
        let error = run_config(&args(&["--api-key-env", "MY_KEY"]), CONSOLE, None, |_| None)
            .expect_err("missing");
        assert!(error.to_string().contains("MY_KEY"), "{error}");
        let config = run_config(&args(&["--api-key-env", "MY_KEY"]), CONSOLE, None, |_| {
            Some("s3cret".into())
        })
        .expect("ok");
        assert_eq!(config.backends[0].api_key.as_deref(), Some("s3cret"));
    }
}
