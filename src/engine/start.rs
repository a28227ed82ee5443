//! A run's start, up to its first request, in two phases.
//!
//! *Checking* changes nothing on disk: every file against the others, the input opened, the
//! backends' preflight, a JSONL FIFO opened. It may block for ever (a FIFO without a writer, a
//! server that accepts and never answers), so a stop abandons it at once.
//!
//! *Preparing* changes files: the results file created, resumed or rewritten, the error file
//! rebuilt, the JSONL file opened. A stop lets it finish, then closes what it made (resumable,
//! marked interrupted); only an abort (a second signal, the grace period over) abandons it, as
//! a kill would, and what a kill leaves is resumable too.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{JsonlStream, RunConfig};
use crate::backend::BackendError;
use crate::backend::http::HttpBackend;
use crate::backend::pool::BackendPool;
use crate::backend::preflight::{self, ModelCatalog, ServerKind};
use crate::error::Error;
use crate::item::DoneSet;
use crate::paths::{self, Accept, NamedPath, OutputPath};
use crate::shutdown::Shutdown;
use crate::sink::Sink;
use crate::sink::fingerprint::{Fingerprint, Recipe, RunFacts};
use crate::sink::jsonl::JsonlSink;
use crate::sink::parquet::{self as parquet_sink, OutputMode};
use crate::sink::{checkpoint, errors, results};
use crate::source::{self, Input, SourceOptions, template};
use crate::storage;

/// A run between its start and its first request: everything checked, opened and prepared.
pub(super) struct Started {
    pub config: RunConfig,
    pub input: source::OpenedInput,
    pub pool: Arc<BackendPool>,
    pub base_url: String,
    pub catalog: Option<Arc<ModelCatalog>>,
    pub ollama: bool,
    pub sinks: Vec<Box<dyn Sink>>,
    pub source_options: SourceOptions,
    pub kept_rows: u64,
    /// Kept rows of failed requests and of invalid lines.
    pub kept_failed: u64,
    pub kept_invalid: u64,
    pub dropped_errors: u64,
    pub done_count: u64,
}

/// What checking found, for preparing to use.
struct Checked {
    config: RunConfig,
    input: source::OpenedInput,
    pool: Arc<BackendPool>,
    base_url: String,
    catalog: Option<Arc<ModelCatalog>>,
    ollama: bool,
    facts: RunFacts,
    /// The JSONL file, when it is a stream that had to be opened while checking.
    jsonl_stream: Option<File>,
    stdout: Option<JsonlStream>,
}

/// Starts a run (see the module comment); a stop before the first request is
/// [`Error::Interrupted`], with every file it touched closed.
pub(super) async fn start(
    config: RunConfig,
    stdout: Option<JsonlStream>,
    shutdown: Shutdown,
) -> Result<Started, Error> {
    let checked = tokio::select! {
        biased;
        _ = shutdown.stopping() => return Err(Error::Interrupted),
        checked = check(config, stdout) => checked?,
    };
    let started = tokio::select! {
        biased;
        _ = shutdown.aborting() => return Err(Error::Interrupted),
        started = prepare(checked, shutdown.clone()) => started?,
    };
    if shutdown.is_stopping() {
        let sinks = started.sinks;
        blocking(move || {
            close_unstarted(sinks);
            Ok(())
        })
        .await?;
        return Err(Error::Interrupted);
    }
    Ok(started)
}

/// The checking phase.
async fn check(mut config: RunConfig, stdout: Option<JsonlStream>) -> Result<Checked, Error> {
    let downloaded = match &config.input {
        Input::File(path) => match path.to_str().filter(|text| storage::is_url(text)) {
            Some(url) => {
                let url = url.to_owned();
                let (staging, local) = blocking(move || download_input(&url)).await?;
                config.input = Input::File(local);
                Some(staging)
            }
            None => None,
        },
        _ => None,
    };
    let file_of_stdout = stdout.as_ref().and_then(|stream| stream.file.clone());
    check_files(&mut config, file_of_stdout.as_ref())?;
    let input = {
        let (input, options) = (config.input.clone(), config.source.clone());
        blocking(move || source::open_for(input, &options).map_err(Error::from)).await?
    };
    let jsonl_stream = match config.jsonl_file.clone() {
        Some(path) if fs::metadata(&path).is_ok_and(|found| !found.is_file()) => {
            let (knob, mode) = (config.knobs.jsonl.clone(), config.existing_outputs);
            Some(blocking(move || open_jsonl_file(&knob, &path, mode)).await?)
        }
        _ => None,
    };
    let pool = Arc::new(pool_of(&config)?);
    let base_url = pool
        .backends()
        .map(HttpBackend::base_url)
        .collect::<Vec<_>>()
        .join(", ");
    let (catalog, kinds) = check_backends(&config, &pool).await?;
    let ollama = kinds.iter().any(|kind| kind.starts_with("ollama"));
    let facts = RunFacts {
        backend: if kinds.is_empty() {
            "not checked (no preflight)".to_owned()
        } else {
            kinds.join(", ")
        },
        input_name: config.input.name(),
        input_bytes: match &config.input {
            Input::File(path) => fs::metadata(path)
                .ok()
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len()),
            Input::Text(text) => Some(text.len() as u64),
            Input::Stdin | Input::Pipe(_) => None,
        },
        results_schema: String::new(),
    };
    // The source holds the file open: its name can go now, and with it the disk it takes
    // once the run ends, however the run ends.
    drop(downloaded);
    Ok(Checked {
        config,
        input,
        pool,
        base_url,
        catalog,
        ollama,
        facts,
        jsonl_stream,
        stdout,
    })
}

/// The models the backends of `config` serve, merged, as a run's preflight finds them; `None`
/// when preflight is off. For a server validating a batch before it runs it.
pub async fn models(config: &RunConfig) -> Result<Option<Arc<ModelCatalog>>, Error> {
    Ok(check_backends(config, &pool_of(config)?).await?.0)
}

/// The backends of `config`, each with its share of the workers.
fn pool_of(config: &RunConfig) -> Result<BackendPool, Error> {
    let backends = config
        .backends
        .iter()
        .cloned()
        .map(HttpBackend::new)
        .collect::<Result<Vec<_>, BackendError>>()?;
    Ok(BackendPool::new(backends, config.stage.most_workers()))
}

/// Preflight of every backend (unless turned off): the models each has, merged into one
/// catalog, and what kind of server each is (`ollama 0.12.3`, `openai-compatible`). A backend
/// that answers any model (the built-in mock) is identified but gives no catalog: it could
/// not list the models of lines not read yet.
async fn check_backends(
    config: &RunConfig,
    pool: &BackendPool,
) -> Result<(Option<Arc<ModelCatalog>>, Vec<String>), Error> {
    let mut catalogs = Vec::new();
    let mut kinds = Vec::new();
    if !config.preflight {
        return Ok((None, kinds));
    }
    let named_model = config.source.named_model();
    for (index, backend) in pool.backends().enumerate() {
        let checked = preflight::check(backend, &config.knobs).await?;
        let url = backend.base_url();
        match checked.kind() {
            ServerKind::Ollama { version } => {
                kinds.push(format!("ollama {version}"));
                tracing::info!("Backend {url} is Ollama {version}.")
            }
            ServerKind::OpenAiCompatible => {
                kinds.push("openai-compatible".to_owned());
                tracing::info!("Backend {url} is an OpenAI-compatible server.")
            }
        }
        if config.any_model {
            continue;
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
    // A request's model must be on some backend; the pool sends it to one that has it.
    let catalog = ModelCatalog::merged(catalogs.iter().map(Arc::as_ref)).map(Arc::new);
    Ok((catalog, kinds))
}

/// The preparing phase.
async fn prepare(checked: Checked, shutdown: Shutdown) -> Result<Started, Error> {
    let Checked {
        config,
        input,
        pool,
        base_url,
        catalog,
        ollama,
        facts,
        jsonl_stream,
        stdout,
    } = checked;
    let outputs = open_outputs(&config, facts, shutdown);
    let (mut sinks, kept_rows, dropped_errors, done) = blocking(outputs).await?;
    let mut source_options = config.source.clone();
    let done_count = done.len() as u64;
    let (kept_failed, kept_invalid) = (done.failed, done.invalid_lines.len() as u64);
    if !done.is_empty() {
        source_options.done = Some(Arc::new(done));
    }
    let jsonl_file = match (jsonl_stream, config.jsonl_file.clone()) {
        (Some(stream), _) => Some(stream),
        (None, Some(path)) => {
            let (knob, mode) = (config.knobs.jsonl.clone(), config.existing_outputs);
            Some(blocking(move || open_jsonl_file(&knob, &path, mode)).await?)
        }
        (None, None) => None,
    };
    if let Some(file) = jsonl_file {
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
        kept_failed,
        kept_invalid,
        dropped_errors,
        done_count,
    })
}

/// Closes the outputs of a run stopped before its first request: the results file is closed
/// as interrupted (resumable), the others flushed.
fn close_unstarted(sinks: Vec<Box<dyn Sink>>) {
    for mut sink in sinks {
        if let Err(error) = sink.finish() {
            tracing::warn!("Cannot close an output of the stopped run: {error}.");
        }
    }
}

/// Runs `work` on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("a start-up thread failed: {error}")))?
}

/// Standard input's file, when the input is standard input redirected from a file.
fn stdin_file(input: &Input) -> Option<fs::Metadata> {
    if !matches!(input, Input::Stdin) {
        return None;
    }
    use std::os::fd::AsFd;
    let handle = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    File::from(handle).metadata().ok()
}

/// Downloads an input object to a folder of its own in the temporary directory, under the
/// object's name (which the results record as the input's). The folder, and the file with it,
/// go when it is dropped: at the end of checking, once the source holds the file open, or on
/// any error before.
fn download_input(url: &str) -> Result<(storage::Staging, PathBuf), Error> {
    let staging = storage::Staging::create("batchflow-input", url)?;
    let (local, bytes) = staging.download(url)?;
    tracing::info!("Downloaded the input {url} ({bytes} bytes).");
    Ok((staging, local))
}

/// Checks every file of the run against the others (see [`crate::paths`]), then points each
/// output at its checked target, so that a link stays a link.
fn check_files(config: &mut RunConfig, stdout: Option<&fs::Metadata>) -> Result<(), Error> {
    let knobs = config.knobs.clone();
    if matches!(config.existing_outputs, OutputMode::Resume { .. }) && config.results.is_none() {
        return Err(Error::ResumeWithoutResults { knob: knobs.output });
    }
    let mut inputs = Vec::new();
    if let Input::File(path) = &config.input {
        inputs.push(NamedPath::new(&knobs.input, path));
    }
    if let Some(path) = &config.pipeline_file {
        inputs.push(NamedPath::new(&knobs.pipeline, path));
    }
    let mut outputs = Vec::new();
    if let Some(output) = &config.results {
        if output.dataset.is_some() {
            // Without its trailing `/`, so that a file in its place is named as one.
            let folder: PathBuf = output.path.components().collect();
            let named = NamedPath::new(&knobs.output, folder);
            outputs.push(OutputPath::new(named, Accept::Directory));
        } else {
            let named = NamedPath::new(&knobs.output, &output.path);
            let mut results = OutputPath::new(named, Accept::RegularFile);
            for (what, suffix) in checkpoint::SIDE_FILES {
                results = results.with_side_file(what, suffix);
            }
            outputs.push(results);
        }
    }
    if let Some(path) = &config.progress.stats_file {
        outputs.push(
            OutputPath::new(NamedPath::new(&knobs.stats, path), Accept::RegularFile)
                .with_side_file("its temporary file", crate::paths::REPLACING_SUFFIX),
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
    let streams = paths::Streams {
        stdin: stdin_file(&config.input),
        stdout: stdout.cloned(),
    };
    let mut targets = paths::check(&inputs, &streams, &outputs)?
        .targets
        .into_iter();
    // After the clash checks, so that a clash is named as one even when the file exists; and
    // before anything is created, so that a refusal leaves no new file behind.
    if let Some(output) = &config.results {
        parquet_sink::check_path(output)?;
    }
    if config.existing_outputs == OutputMode::New {
        for (knob, path) in [
            (&knobs.errors, &config.errors_file),
            (&knobs.jsonl, &config.jsonl_file),
        ] {
            // A FIFO or a device is written to, never replaced: it may exist.
            let exists = |path: &&PathBuf| fs::metadata(path).is_ok_and(|found| found.is_file());
            if let Some(path) = path.as_ref().filter(exists) {
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
    if let Some(output) = &mut config.results {
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
    let output = config.results.clone();
    let recipe = recipe(&config.source);
    let errors_file = config.errors_file.clone();
    let mode = config.existing_outputs;
    let errors_knob = config.knobs.errors.clone();
    move || {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        let (mut kept_rows, mut dropped_errors, mut done) = (0, 0, DoneSet::default());
        let mut kept = Vec::new();
        if let Some(output) = &output {
            // Whether raw responses are kept is how a row is stored, not what it holds.
            facts.results_schema = results::schema(false, &output.extras)
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
            kept = prepared.kept;
            sinks.push(Box::new(prepared.sink));
        }
        if let Some(path) = &errors_file {
            sinks.push(Box::new(errors::open(&errors_knob, path, mode, &kept)?));
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
        upstream: source.upstream.clone(),
    }
}

/// Opens a JSONL output file: appended to on resume, replaced with `--overwrite`, else new.
fn open_jsonl_file(knob: &str, path: &Path, mode: OutputMode) -> Result<File, Error> {
    let mut options = fs::OpenOptions::new();
    match mode {
        OutputMode::Resume { .. } => options.append(true).create(true),
        OutputMode::Overwrite => options.write(true).create(true).truncate(true),
        OutputMode::New if fs::metadata(path).is_ok_and(|found| !found.is_file()) => {
            options.write(true)
        }
        OutputMode::New => options.write(true).create_new(true),
    };
    options.open(path).map_err(|cause| Error::OpenOutput {
        knob: knob.to_owned(),
        path: path.to_owned(),
        cause,
    })
}
