//! One run, wired end to end: preflight, then the source thread, the stage and the sink thread
//! connected by bounded channels. The binary, `tune` and library callers drive runs through
//! [`run`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::backend::BackendError;
use crate::backend::http::{HttpBackend, HttpBackendConfig};
use crate::backend::pool::BackendPool;
use crate::backend::preflight::{self, ModelCatalog, ServerKind};
use crate::error::{Error, ExitStatus};
use crate::paths::{self, Accept, Knobs, NamedPath, OutputPath};
use crate::progress::{self, Probes, Progress, ProgressConfig};
use crate::record::DoneSet;
use crate::shutdown::Shutdown;
use crate::sink::fingerprint::{Fingerprint, Recipe, RunFacts};
use crate::sink::jsonl::JsonlSink;
use crate::sink::parquet::{self as parquet_sink, OutputMode, ParquetOutput};
use crate::sink::{self, Sink};
use crate::sink::{checkpoint, errors, results};
use crate::source::{self, Input, InputSize, Shard, SourceOptions, SourceSummary, template};
use crate::stage::{self, StageConfig};
use crate::stats::{RunStats, StatsSnapshot};

/// Items buffered between the source thread and the stage. Enough to smooth bursts; small
/// enough that memory does not depend on the input's length.
const CHANNEL_CAPACITY: usize = 1024;

/// Outcome batches waiting for the writer thread.
const OUTCOME_BATCHES: usize = 2;

/// Everything a run needs, already resolved from defaults, files and flags.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: Input,
    pub source: SourceOptions,
    /// One or more backends; the batch is spread over them.
    pub backends: Vec<HttpBackendConfig>,
    /// Check the server and its models before reading input.
    pub preflight: bool,
    pub stage: StageConfig,
    /// The Parquet results file, if any.
    pub output: Option<ParquetOutput>,
    /// A JSONL output file (a pipeline's `sink.jsonl` path), opened by the run.
    pub jsonl_file: Option<PathBuf>,
    /// The error file: every outcome that ends in error, as an output line.
    pub errors_file: Option<PathBuf>,
    /// What to do with an existing JSONL or error file (the Parquet output has its own mode).
    pub existing_outputs: OutputMode,
    /// The pipeline file the run was read from: an input no output may name.
    pub pipeline_file: Option<PathBuf>,
    /// How the user named each file, for messages.
    pub knobs: Knobs,
    pub progress: ProgressConfig,
    /// After an interrupt, how long in-flight requests may take (used by the caller that
    /// installs the signal handlers).
    pub grace: Duration,
}

/// JSONL output to a stream the caller opened (standard output, a test buffer).
pub struct JsonlStream {
    pub writer: Box<dyn Write + Send>,
    /// The stream's file, when it is one, so that it is checked against the input like any
    /// output (`batchflow in.jsonl >> in.jsonl` would read its own results forever).
    pub file: Option<std::fs::Metadata>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    /// Figures of what reached the sinks, as of the end.
    pub stats: StatsSnapshot,
    pub backend_url: String,
    pub interrupted: bool,
    /// The output's reader went away (`| head`).
    pub output_closed: bool,
    /// What ended the run early, with everything already written kept.
    pub fatal: Option<Error>,
    pub elapsed: Duration,
    /// The Parquet results file written, if any.
    pub output: Option<PathBuf>,
    /// Rows an earlier run left in the results file.
    pub kept_rows: u64,
    /// Error rows dropped by `--retry-errors`.
    pub dropped_errors: u64,
    /// Input lines skipped because the results file already had them.
    pub skipped_lines: u64,
    /// Kept rows whose custom_id (or line) is not in this input: a sign of resuming with a
    /// different input. Only known when the whole input was read.
    pub unknown_kept: Option<u64>,
}

impl RunReport {
    pub fn exit_status(&self) -> ExitStatus {
        if self.fatal.is_some() {
            ExitStatus::Error
        } else if self.interrupted {
            ExitStatus::Interrupted
        } else if self.stats.failed + self.stats.invalid > 0 {
            ExitStatus::SomeFailed
        } else {
            ExitStatus::Success
        }
    }
}

/// A run between its start and its first request: everything checked, opened and prepared.
struct Started {
    config: RunConfig,
    input: source::OpenedInput,
    pool: Arc<BackendPool>,
    base_url: String,
    catalog: Option<Arc<ModelCatalog>>,
    ollama: bool,
    sinks: Vec<Box<dyn Sink>>,
    source_options: SourceOptions,
    kept_rows: u64,
    dropped_errors: u64,
    done_count: u64,
}

/// Runs a batch to its end (or until `shutdown` stops it). Errors before the first request
/// (configuration, clashing or unusable outputs, preflight, unopenable input) are returned as
/// `Err`, and so is a stop before it ([`Error::Interrupted`]: start-up may block on a FIFO or
/// a silent server); errors after it are in [`RunReport::fatal`], because by then results
/// exist and are kept. `stdout` receives JSONL output lines when given.
pub async fn run(
    config: RunConfig,
    stdout: Option<JsonlStream>,
    shutdown: Shutdown,
) -> Result<RunReport, Error> {
    let started_at = Instant::now();
    let started = tokio::select! {
        biased;
        _ = shutdown.stopping() => return Err(Error::Interrupted),
        started = start(config, stdout, shutdown.clone()) => started?,
    };
    drive(started, started_at, shutdown).await
}

/// Checks every file, opens the input, checks the backends and prepares the outputs. File
/// work runs on blocking threads, so that a stop is seen while it waits.
async fn start(
    mut config: RunConfig,
    stdout: Option<JsonlStream>,
    shutdown: Shutdown,
) -> Result<Started, Error> {
    let file_of_stdout = stdout.as_ref().and_then(|stream| stream.file.clone());
    check_files(&mut config, file_of_stdout.as_ref())?;
    let input = {
        let (input, options) = (config.input.clone(), config.source.clone());
        blocking(move || source::open_for(input, &options).map_err(Error::from)).await?
    };
    let backends = config
        .backends
        .iter()
        .cloned()
        .map(HttpBackend::new)
        .collect::<Result<Vec<_>, BackendError>>()?;
    let pool = Arc::new(BackendPool::new(backends, config.stage.most_workers()));
    let base_url = pool
        .backends()
        .map(HttpBackend::base_url)
        .collect::<Vec<_>>()
        .join(", ");
    let named_model = config.source.named_model();
    let mut catalogs = Vec::new();
    let mut ollama = false;
    let mut kinds = Vec::new();
    if config.preflight {
        for (index, backend) in pool.backends().enumerate() {
            let checked = preflight::check(backend).await?;
            let url = backend.base_url();
            match checked.kind() {
                ServerKind::Ollama { version } => {
                    ollama = true;
                    kinds.push(format!("ollama {version}"));
                    tracing::info!("Backend {url} is Ollama {version}.")
                }
                ServerKind::OpenAiCompatible => {
                    kinds.push("openai-compatible".to_owned());
                    tracing::info!("Backend {url} is an OpenAI-compatible server.")
                }
            }
            if let Some(model) = named_model {
                if !checked.has(model) {
                    return Err(checked.missing(url, model).into());
                }
            }
            let checked = Arc::new(checked);
            pool.learn_models(index, Arc::clone(&checked));
            catalogs.push(checked);
        }
    }
    // A request's model must be on some backend; the pool sends it to one that has it.
    let catalog = ModelCatalog::merged(catalogs.iter().map(Arc::as_ref)).map(Arc::new);

    let facts = RunFacts {
        backend: if kinds.is_empty() {
            "not checked (no preflight)".to_owned()
        } else {
            kinds.join(", ")
        },
        input_name: config.input.name(),
        input_bytes: match &config.input {
            Input::File(path) => std::fs::metadata(path)
                .ok()
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len()),
            Input::Text(text) => Some(text.len() as u64),
            Input::Stdin => None,
        },
        results_schema: String::new(),
    };
    let outputs = open_outputs(&config, facts, shutdown.clone());
    let (mut sinks, kept_rows, dropped_errors, done) = blocking(outputs).await?;
    let mut source_options = config.source.clone();
    let done_count = done.len() as u64;
    if !done.is_empty() {
        source_options.done = Some(Arc::new(done));
    }
    if let Some(path) = config.jsonl_file.clone() {
        let mode = config.existing_outputs;
        let knob = config.knobs.jsonl.clone();
        let file = blocking(move || open_jsonl_file(&knob, &path, mode)).await?;
        sinks.push(Box::new(JsonlSink::new(file)));
    }
    if let Some(stdout) = stdout {
        sinks.push(Box::new(JsonlSink::new(stdout.writer)));
    }
    Ok(Started {
        config,
        input,
        pool,
        base_url,
        catalog,
        ollama,
        sinks,
        source_options,
        kept_rows,
        dropped_errors,
        done_count,
    })
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("a start-up thread failed: {error}")))?
}

/// Checks every file of the run against the others (see [`crate::paths`]), then points each
/// output at its checked target, so that a link stays a link.
fn check_files(config: &mut RunConfig, stdout: Option<&std::fs::Metadata>) -> Result<(), Error> {
    let knobs = config.knobs.clone();
    let mut inputs = Vec::new();
    if let Input::File(path) = &config.input {
        inputs.push(NamedPath::new(&knobs.input, path));
    }
    if let Some(path) = &config.pipeline_file {
        inputs.push(NamedPath::new(&knobs.pipeline, path));
    }
    let mut outputs = Vec::new();
    if let Some(output) = &config.output {
        let mut results = OutputPath::new(
            NamedPath::new(&knobs.output, &output.path),
            Accept::RegularFile,
        );
        for (what, suffix) in checkpoint::SIDE_FILES {
            results = results.with_side_file(what, suffix);
        }
        outputs.push(results);
    }
    if let Some(path) = &config.progress.stats_file {
        outputs.push(
            OutputPath::new(NamedPath::new(&knobs.stats, path), Accept::RegularFile)
                .with_side_file("its temporary file", progress::STATS_TEMPORARY_SUFFIX),
        );
    }
    if let Some(path) = &config.errors_file {
        outputs.push(OutputPath::new(
            NamedPath::new(&knobs.errors, path),
            Accept::RegularFile,
        ));
    }
    if let Some(path) = &config.jsonl_file {
        outputs.push(OutputPath::new(
            NamedPath::new(&knobs.jsonl, path),
            Accept::Stream,
        ));
    }
    let mut targets = paths::check(&inputs, &outputs, stdout)?.targets.into_iter();
    // After the clash checks, so that a clash is named as one even when the file exists; and
    // before anything is created, so that a refusal leaves no new file behind.
    if let Some(output) = &config.output {
        parquet_sink::check_path(output)?;
    }
    if config.existing_outputs == OutputMode::New {
        for (knob, path) in [
            (&knobs.errors, &config.errors_file),
            (&knobs.jsonl, &config.jsonl_file),
        ] {
            if let Some(path) = path.as_ref().filter(|path| path.symlink_metadata().is_ok()) {
                return Err(Error::OutputExists {
                    knob: knob.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    let mut next_target = |path: &mut PathBuf| {
        if let Some(target) = targets.next() {
            *path = target;
        }
    };
    if let Some(output) = &mut config.output {
        next_target(&mut output.path);
    }
    if let Some(path) = &mut config.progress.stats_file {
        next_target(path);
    }
    if let Some(path) = &mut config.errors_file {
        next_target(path);
    }
    if let Some(path) = &mut config.jsonl_file {
        next_target(path);
    }
    Ok(())
}

type OpenedOutputs = (Vec<Box<dyn Sink>>, u64, u64, DoneSet);

/// Prepares the results file and opens the error file beside it (rebuilt from the results'
/// error rows when resuming): the sinks, rows kept, error rows dropped, and what is done.
fn open_outputs(
    config: &RunConfig,
    mut facts: RunFacts,
    shutdown: Shutdown,
) -> impl FnOnce() -> Result<OpenedOutputs, Error> + Send + 'static {
    let output = config.output.clone();
    let recipe = recipe(&config.source);
    let errors_file = config.errors_file.clone();
    let mode = config.existing_outputs;
    let errors_knob = config.knobs.errors.clone();
    move || {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        let (mut kept_rows, mut dropped_errors, mut done) = (0, 0, DoneSet::default());
        let mut kept = None;
        if let Some(output) = &output {
            facts.results_schema = results::schema(output.keep_raw, &output.extras)
                .fields()
                .iter()
                .map(|field| field.name().as_str())
                .collect::<Vec<_>>()
                .join(",");
            let fingerprint = Fingerprint::of(&recipe, &facts);
            let prepared = parquet_sink::prepare(output, fingerprint, shutdown)?;
            kept_rows = prepared.kept_rows;
            dropped_errors = prepared.dropped_errors;
            done = prepared.done;
            kept = prepared
                .kept
                .map(|existing| (output.path.clone(), existing));
            sinks.push(Box::new(prepared.sink));
        }
        if let Some(path) = &errors_file {
            let kept = kept
                .as_ref()
                .map(|(path, existing)| (path.as_path(), existing));
            sinks.push(Box::new(errors::open(&errors_knob, path, mode, kept)?));
        }
        Ok((sinks, kept_rows, dropped_errors, done))
    }
}

/// What the rows depend on, as far as the source says: the model, and for records the
/// endpoint, options, system prompt, template, output schema and id scheme.
fn recipe(source: &SourceOptions) -> Recipe {
    let Some(shape) = source.records.as_deref() else {
        return Recipe {
            model: source.model_override.clone(),
            ..Recipe::default()
        };
    };
    let mut options = serde_json::Map::new();
    options.insert("options".into(), shape.options.clone().into());
    options.extend(
        shape
            .keep_alive
            .clone()
            .map(|value| ("keep_alive".into(), value)),
    );
    options.extend(shape.think.clone().map(|value| ("think".into(), value)));
    Recipe {
        model: Some(shape.model.clone()),
        endpoint: Some(shape.endpoint.clone()),
        // serde_json's map keeps keys sorted, so this text is canonical.
        options: Some(serde_json::Value::Object(options).to_string()),
        system: shape.system.clone(),
        template: Some(shape.prompt.canonical_text()),
        output_schema: shape.output.as_ref().map(|output| output.json.to_string()),
        id_scheme: shape
            .id_column
            .is_none()
            .then_some(template::CONTENT_ID_SCHEME),
    }
}

/// Opens a JSONL output file: appended to on resume, replaced with `--overwrite`, else new.
fn open_jsonl_file(knob: &str, path: &Path, mode: OutputMode) -> Result<File, Error> {
    let mut options = std::fs::OpenOptions::new();
    match mode {
        OutputMode::Resume { .. } => options.append(true).create(true),
        OutputMode::Overwrite => options.write(true).create(true).truncate(true),
        OutputMode::New => options.write(true).create_new(true),
    };
    options.open(path).map_err(|cause| Error::OpenOutput {
        knob: knob.to_owned(),
        path: path.to_owned(),
        cause,
    })
}

/// Runs a started batch: the source thread, the stage and the sink thread.
async fn drive(
    started: Started,
    started_at: Instant,
    shutdown: Shutdown,
) -> Result<RunReport, Error> {
    let Started {
        config,
        input,
        pool,
        base_url,
        catalog,
        ollama,
        sinks,
        source_options,
        kept_rows,
        dropped_errors,
        done_count,
    } = started;
    let stats = Arc::new(RunStats::new(started_at));
    count_expected(&input, done_count, &config.source, &stats);
    let probes = Probes {
        pool: Arc::clone(&pool),
        ollama,
    };
    let progress = Progress::start(Arc::clone(&stats), config.progress.clone(), probes);
    let (item_sender, items) = mpsc::channel(CHANNEL_CAPACITY);
    let source = source::spawn(input, source_options, item_sender, shutdown.clone())?;
    // Batches of up to stage::OUTCOMES_HELD: one to fill while the writer drains another.
    let (outcome_sender, outcomes) = mpsc::channel(OUTCOME_BATCHES);
    let sink = sink::spawn(
        sinks,
        outcomes,
        tokio::runtime::Handle::current(),
        Arc::clone(&stats),
    )?;

    let mut stage_config = config.stage;
    stage_config.workers *= pool.len();
    stage_config.adaptive_max = stage_config.adaptive_max.map(|max| max * pool.len());
    let target = stage::Target {
        backend: pool,
        base_url: base_url.clone(),
        catalog,
    };
    let stage_report = stage::run(
        target,
        stage_config,
        shutdown.clone(),
        Arc::clone(&stats),
        items,
        outcome_sender,
    )
    .await;

    let sink_report = tokio::task::spawn_blocking(move || sink.join())
        .await
        .map_err(|error| Error::Internal(format!("the output thread failed: {error}")))?
        .map_err(|_| Error::Internal("the output thread panicked".into()))?;

    let mut fatal = stage_report.fatal.map(Error::from);
    if let Some(error) = sink_report.error {
        fatal.get_or_insert(Error::Output(error));
    }
    // A source still blocked reading (say, an interactive stdin) after an early stop is left
    // alone; it holds nothing that needs closing.
    let mut source_summary: Option<SourceSummary> = None;
    if stage_report.input_exhausted || source.is_finished() {
        match tokio::task::spawn_blocking(move || source.join()).await {
            Ok(Ok(Err(error))) => {
                fatal.get_or_insert(error.into());
            }
            Ok(Ok(Ok(summary))) => source_summary = Some(summary),
            Ok(Err(_)) | Err(_) => {
                fatal.get_or_insert(Error::Internal("the input thread panicked".into()));
            }
        }
    }
    let final_stats = match progress.finish().await {
        Some(snapshot) => snapshot,
        None => stats.snapshot(Instant::now()),
    };
    Ok(RunReport {
        stats: final_stats,
        backend_url: base_url,
        interrupted: shutdown.was_interrupted(),
        output_closed: sink_report.closed || stage_report.sink_closed,
        fatal,
        elapsed: started_at.elapsed(),
        output: config.output.map(|output| output.path),
        kept_rows,
        dropped_errors,
        skipped_lines: source_summary.map_or(0, |summary| summary.skipped_done),
        unknown_kept: source_summary
            .filter(|summary| stage_report.input_exhausted && !summary.reached_limit)
            .map(|summary| done_count.saturating_sub(summary.skipped_done)),
    })
}

/// Sets the run's expected result count: known at once for Parquet and embedded input, counted
/// on a side thread for a JSONL file (a fast byte scan), unknown for stdin. Lines already done
/// on resume are not expected again.
fn count_expected(
    input: &source::OpenedInput,
    done: u64,
    options: &SourceOptions,
    stats: &Arc<RunStats>,
) {
    let (shard, limit) = (options.shard, options.limit);
    // A shard holds about 1/n of the input: close enough for progress.
    let expected = move |items: u64| {
        (items / shard.map_or(1, |shard: Shard| shard.count))
            .saturating_sub(done)
            .min(limit.unwrap_or(u64::MAX))
    };
    let size = input.size();
    if let (Some(limit), InputSize::Countable(_)) = (limit, &size) {
        // A sample of a file: not worth a scan of the whole file.
        stats.set_total(limit);
        return;
    }
    match size {
        InputSize::Known(items) => stats.set_total(expected(items)),
        InputSize::Countable(file) => {
            let stats = Arc::clone(stats);
            let counter = std::thread::Builder::new()
                .name("batchflow-count".into())
                .spawn(move || match source::count_lines(&file) {
                    Ok(lines) => stats.set_total(expected(lines)),
                    Err(error) => tracing::debug!("Cannot count input lines: {error}."),
                });
            if let Err(error) = counter {
                tracing::debug!("Cannot start the line counter: {error}.");
            }
        }
        InputSize::Unknown => {}
    }
}
