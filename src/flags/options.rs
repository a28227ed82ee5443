//! Flags into the library's options: a run's knobs laid over `RunOptions::default()` (the main
//! command) or over what a pipeline file gave (`run FILE`, where only the flags given win),
//! and the mock server's flags into a `MockConfig`.

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use batchflow::options::RunOptions;
use batchflow::sink::parquet::OutputMode;
use batchflow::source::Input;

use super::MockArgs;
use super::run::{BackendArgs, Given, OnReloadFlag, OutputArgs, RunArgs, RunKnobs, WatchArgs};
use batchflow::progress::OnReload;

impl RunArgs {
    /// The run these flags ask for, on request lines (records go through a pipeline).
    pub fn options(&self) -> RunOptions {
        let mut options = RunOptions {
            input: Input::from_arg(self.input.clone()),
            ..RunOptions::default()
        };
        self.knobs.lay_over(&mut options, &Given::all());
        options
    }
}

impl RunKnobs {
    /// Lays the flags that `given` holds over `options`.
    pub fn lay_over(&self, options: &mut RunOptions, given: &Given) {
        if given.has("workers") {
            options.workers = self.workers;
        }
        if given.has("shard") {
            options.shard = self.shard.or(options.shard);
        }
        if given.has("max_line_bytes") {
            options.max_line_bytes = self.max_line_bytes;
        }
        if given.has("grace") {
            options.grace = self.grace.0;
        }
        if given.has("on_reload") {
            options.on_reload = match self.on_reload {
                OnReloadFlag::Warn => OnReload::Warn,
                OnReloadFlag::Stop => OnReload::Stop,
            };
        }
        self.backend.lay_over(options, given);
        self.output.lay_over(options, given);
        self.watch.lay_over(options, given);
        options.store = self.store.settings();
    }
}

impl BackendArgs {
    /// Lays the flags that `given` holds over `options`. `--model` is the pipeline's
    /// `request.model` when there is a file (applied before it is checked), so it is laid
    /// here only on request lines.
    pub fn lay_over(&self, options: &mut RunOptions, given: &Given) {
        if given.has("model") && options.records.is_none() {
            options.model = self.model.clone();
        }
        if given.has("backend") && !self.backend.is_empty() {
            options.backends = self.backend.clone();
        }
        if given.has("api_key_env") && self.api_key_env.is_some() {
            options.api_key_env = self.api_key_env.clone();
            options.knobs.api_key_env = "--api-key-env".into();
        }
        if given.has("timeout") {
            options.timeout = self.timeout.0;
        }
        if given.has("connect_timeout") {
            options.connect_timeout = self.connect_timeout.0;
        }
        let retry = &mut options.retry;
        if given.has("retries") {
            retry.max_retries = self.retries;
        }
        if given.has("retry_base") {
            retry.base_delay = self.retry_base.0;
        }
        if given.has("retry_max") {
            retry.max_delay = self.retry_max.0;
        }
        if given.has("max_response_bytes") {
            options.max_response_bytes = self.max_response_bytes;
        }
        if given.has("options") && self.options.is_some() {
            options.ollama_options = self.options.clone();
        }
        if let Some(keep_alive) = self
            .keep_alive
            .as_deref()
            .filter(|_| given.has("keep_alive"))
        {
            options.keep_alive = Some(super::run::keep_alive_value(keep_alive));
        }
        if given.has("no_preflight") && self.no_preflight {
            options.preflight = false;
            options.knobs.no_preflight = "--no-preflight".into();
        }
    }
}

impl OutputArgs {
    pub fn lay_over(&self, options: &mut RunOptions, given: &Given) {
        options.existing = if self.resume {
            OutputMode::Resume {
                retry_errors: self.retry_errors,
                prune: self.prune,
            }
        } else if self.overwrite {
            OutputMode::Overwrite
        } else {
            OutputMode::New
        };
        options.allow_config_change = self.allow_config_change;
        if given.has("output") && self.output.is_some() {
            options.results = self.output.clone();
            options.knobs.output = "--output".into();
        }
        if given.has("errors") && self.errors.is_some() {
            options.errors_file = self.errors.clone();
            options.knobs.errors = "--errors".into();
        }
        if given.has("no_raw") && self.no_raw {
            options.keep_raw = false;
        }
        if given.has("ordered") && self.ordered {
            options.ordered = true;
        }
        if given.has("checkpoint_rows") {
            options.checkpoint_rows = self.checkpoint_rows;
        }
        if given.has("checkpoint_secs") {
            options.checkpoint_interval = self.checkpoint_secs.0;
        }
        if given.has("part_row_groups") {
            options.part_row_groups = self.part_row_groups;
        }
    }
}

impl WatchArgs {
    pub fn lay_over(&self, options: &mut RunOptions, given: &Given) {
        if given.has("stats") && self.stats.is_some() {
            options.stats_file = self.stats.clone();
            options.knobs.stats = "--stats".into();
        }
        if given.has("no_live_status") && self.no_live_status {
            options.live_status = false;
        }
        if given.has("progress_interval") {
            options.progress_interval = self.progress_interval.0;
        }
        if given.has("metrics") && self.metrics.is_some() {
            options.metrics = self.metrics;
        }
        if given.has("metrics_linger") {
            options.metrics_linger = self.metrics_linger.0;
        }
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
            any_model: self.any_model,
            load_delay: self.load_delay.0,
            cpu_share: self.cpu_share,
            ..MockConfig::default()
        }
    }
}
