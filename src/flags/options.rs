//! Flags into the library's options: a batch's flags laid over `RunOptions::default()`, the
//! flags of `run FILE` laid over what the pipeline file gave (the command line wins), and the
//! mock server's flags into a `MockConfig`.

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use batchflow::options::RunOptions;
use batchflow::sink::parquet::OutputMode;
use batchflow::source::Input;
use batchflow::stage::retry::RetryPolicy;

use super::{MockArgs, PipelineRunArgs, RunArgs};

/// What to do with existing outputs, as `--resume`, `--retry-errors`, `--prune` and
/// `--overwrite` say.
fn existing(resume: bool, retry_errors: bool, prune: bool, overwrite: bool) -> OutputMode {
    if resume {
        OutputMode::Resume {
            retry_errors,
            prune,
        }
    } else if overwrite {
        OutputMode::Overwrite
    } else {
        OutputMode::New
    }
}

impl RunArgs {
    /// The run these flags ask for.
    pub fn options(&self) -> RunOptions {
        let defaults = RunOptions::default();
        RunOptions {
            input: Input::from_arg(self.input.clone()),
            model: self.model.clone(),
            backends: self.backend.clone(),
            api_key_env: self.api_key_env.clone(),
            workers: self.workers,
            timeout: self.timeout.0,
            connect_timeout: self.connect_timeout.0,
            retry: RetryPolicy {
                max_retries: self.retries,
                base_delay: self.retry_base.0,
                max_delay: self.retry_max.0,
                ..defaults.retry
            },
            ordered: self.ordered,
            preflight: !self.no_preflight,
            grace: self.grace.0,
            max_line_bytes: self.max_line_bytes,
            max_response_bytes: self.max_response_bytes,
            shard: self.shard,
            results: self.output.clone(),
            existing: existing(self.resume, self.retry_errors, self.prune, self.overwrite),
            allow_config_change: self.allow_config_change,
            keep_raw: !self.no_raw,
            checkpoint_rows: self.checkpoint_rows,
            checkpoint_interval: self.checkpoint_secs.0,
            part_row_groups: self.part_row_groups,
            errors_file: self.errors.clone(),
            stats_file: self.stats.clone(),
            progress_interval: self.progress_interval.0,
            metrics: self.metrics,
            metrics_linger: self.metrics_linger.0,
            store: self.store.settings(),
            ..defaults
        }
    }
}

impl PipelineRunArgs {
    /// Lays these flags over the options a pipeline file gave.
    pub fn lay_over(&self, options: &mut RunOptions) {
        options.existing = existing(self.resume, self.retry_errors, self.prune, self.overwrite);
        options.allow_config_change = self.allow_config_change;
        if let Some(stats) = &self.stats {
            options.stats_file = Some(stats.clone());
            options.knobs.stats = "--stats".into();
        }
        if let Some(errors) = &self.errors {
            options.errors_file = Some(errors.clone());
            options.knobs.errors = "--errors".into();
        }
        options.progress_interval = self.progress_interval.0;
        options.shard = self.shard.or(options.shard);
        options.metrics = self.metrics.or(options.metrics);
        options.metrics_linger = self.metrics_linger.0;
        options.store = self.store.settings();
        options.pipeline_file = Some(self.file.clone());
    }
}

impl MockArgs {
    pub fn config(&self) -> MockConfig {
        MockConfig {
            port: self.port,
            slots: self.slots.max(1),
            max_queue: self.max_queue,
            latency: self.latency.0,
            latency_spread: self.spread,
            faults: FaultRates {
                server_error: self.fail_500,
                rate_limited: self.fail_429,
                reset: self.fail_reset,
                hang: self.fail_hang,
                truncated: self.fail_truncated,
                bad_output: self.fail_schema,
            },
            seed: self.seed,
            retry_after: self.retry_after.0,
            hang: self.hang.0,
            models: self.models.clone(),
            ..MockConfig::default()
        }
    }
}
