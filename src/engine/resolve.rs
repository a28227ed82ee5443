//! Options into a run: [`RunOptions::resolve`] turns every knob into the engine's
//! [`RunConfig`], with the backend's address and API key taken from the environment where the
//! options leave them open (the built-in mock, which answers any model, needs no key).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::RunConfig;
use crate::backend::http::HttpBackendConfig;
use crate::backend::{DEFAULT_OLLAMA_HOST, parse_base_url};
use crate::error::Error;
use crate::metrics::MetricsConfig;
use crate::options::{Console, RunOptions, Workers};
use crate::progress::{ProgressConfig, ProgressMode};
use crate::sink::dataset::{self, PartOwner};
use crate::sink::parquet::ParquetOutput;
use crate::source::{Input, SourceOptions};
use crate::stage::{OutputCheck, StageConfig};
use crate::storage::{self, StorageError};

impl RunOptions {
    /// The run these options describe. `backend_override` (the built-in mock's URL, which
    /// answers any model and needs no key) beats
    /// [`RunOptions::backends`], which beat `OLLAMA_HOST`, which beats the default. `env` reads
    /// environment variables (a parameter, so that tests need not touch the process's).
    pub fn resolve(
        &self,
        console: Console,
        backend_override: Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<RunConfig, Error> {
        let mock = backend_override.is_some();
        let addresses: Vec<String> = match backend_override {
            Some(address) => vec![address],
            None if !self.backends.is_empty() => self.backends.clone(),
            None => vec![
                env("OLLAMA_HOST")
                    .filter(|host| !host.trim().is_empty())
                    .unwrap_or_else(|| DEFAULT_OLLAMA_HOST.to_owned()),
            ],
        };
        // The built-in mock neither needs nor checks a key, so none is required for it.
        let api_key = match &self.api_key_env {
            Some(_) if mock => None,
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
            input: self.local_input()?,
            source: SourceOptions {
                model_override: self.model.clone(),
                max_line_bytes: self.max_line_bytes,
                done: None,
                track_done: false,
                records: self.records.clone(),
                shard: self.shard,
                limit: None,
                model_knob: self.knobs.model.clone(),
                log_invalid: true,
                ollama_options: self.ollama_options.clone(),
                keep_alive: self.keep_alive.clone(),
                upstream: self.upstream.clone(),
            },
            backends,
            preflight: self.preflight,
            any_model: mock,
            stage: StageConfig {
                workers,
                adaptive_max,
                ordered: self.ordered,
                retry: self.retry,
                output: self.output_schema().map(|schema| OutputCheck {
                    schema: Arc::clone(schema),
                    retries: self.output_retries,
                }),
                shared_limit: None,
            },
            results: self
                .results
                .as_deref()
                .map(|path| self.results_output(path))
                .transpose()?,
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
                on_reload: self.on_reload,
                stage: None,
            },
            live_status: self.live_status,
            grace: self.grace,
            metrics: self.metrics.map(|addr| MetricsConfig {
                addr,
                linger: self.metrics_linger,
            }),
            watch: None,
        })
    }
}

impl RunOptions {
    /// The input, a `file://` URL read as the path it names.
    fn local_input(&self) -> Result<Input, Error> {
        if let Input::File(path) = &self.input {
            if let Some(local) = path.to_str().and_then(storage::local_path) {
                return Ok(Input::File(local?));
            }
        }
        Ok(self.input.clone())
    }

    /// The results output at `path`: a file, a dataset directory (ending in `/`), or a dataset
    /// on object storage, written through a local staging directory of its own.
    fn results_output(&self, path: &Path) -> Result<ParquetOutput, Error> {
        let owner = self.shard.map_or(PartOwner::UNSHARDED, |shard| PartOwner {
            index: shard.index,
            count: shard.count,
        });
        let text = path.to_str().unwrap_or_default();
        let (path, remote) = if storage::is_url(text) {
            if !text.ends_with('/') {
                return Err(StorageError::Url {
                    url: text.to_owned(),
                    reason: format!(
                        "object storage takes a results dataset: end {} with / (as in s3://bucket/results/)",
                        self.knobs.output
                    ),
                }
                .into());
            }
            let remote = storage::Remote::open_with(text, self.store)?;
            let staging = storage::staging_name(
                "batchflow",
                &format!("{} {}/{}", remote.url(), owner.index, owner.count),
            );
            let staging = PathBuf::from(format!("{}/", staging.display()));
            (staging, Some(remote))
        } else {
            match storage::local_path(text) {
                Some(local) => (local?, None),
                None => (path.to_owned(), None),
            }
        };
        Ok(ParquetOutput {
            dataset: dataset::names_dataset(&path).then_some(owner),
            path,
            remote,
            part_row_groups: self.part_row_groups,
            mode: self.existing,
            keep_raw: self.keep_raw,
            checkpoint_rows: usize::try_from(self.checkpoint_rows).unwrap_or(usize::MAX),
            checkpoint_interval: self.checkpoint_interval,
            extras: self.extras.clone(),
            codec: self.codec,
            allow_config_change: self.allow_config_change,
            published: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Knobs;

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
    fn the_built_in_mock_needs_no_api_key_and_answers_any_model() {
        let options = RunOptions {
            api_key_env: Some("MY_KEY".into()),
            ..RunOptions::default()
        };
        let mock = Some("http://127.0.0.1:5".to_owned());
        let config = options
            .resolve(Console::default(), mock, |_| None)
            .expect("no key needed for the mock");
        assert_eq!(config.backends[0].api_key, None);
        assert!(config.any_model);
        let real = options
            .resolve(Console::default(), None, |_| Some("s3cret".into()))
            .expect("ok");
        assert!(!real.any_model);
    }
}
