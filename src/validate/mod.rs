//! The checks of a pipeline file that need I/O — the source's columns against the template, the
//! output schema against the results, the backend and its model — and the dry run. Used by
//! `batchflow validate` and before `batchflow run`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::backend::http::HttpBackend;
use crate::backend::preflight;
use crate::config::{
    self, AnyPipelineFile, ConfigError, Pipeline, PipelineFile, ServeFile, ServePipeline,
};
use crate::engine::RunConfig;
use crate::error::Error;
use crate::item::SourceItem;
use crate::options::{Console, RunOptions};
use crate::schema::ColumnType;
use crate::sink::results::ExtraColumns;
use crate::source;
use crate::source::parquet::is_parquet;

pub mod stages;

/// The columns a record source has, with the column type each maps to.
#[derive(Debug, Clone, Default)]
pub struct SourceColumns {
    pub types: HashMap<String, ColumnType>,
    /// Where the names came from, for messages: the Parquet schema or the first record.
    pub origin: String,
}

/// Reads the source's columns: a Parquet file's schema, or a JSONL file's first record. `None`
/// for stdin (nothing can be read ahead) and for request files.
pub fn source_columns(pipeline: &Pipeline) -> Result<Option<SourceColumns>, String> {
    let (Some(path), Some(_)) = (&pipeline.input, &pipeline.shape) else {
        return Ok(None);
    };
    let mut file = File::open(path)
        .map_err(|error| format!("source.path: cannot open {}: {error}", path.display()))?;
    let parquet = is_parquet(path, &mut file)
        .map_err(|error| format!("source.path: {}: {error}", path.display()))?;
    if parquet {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|error| {
            format!(
                "source.path: {} is not readable Parquet: {error}",
                path.display()
            )
        })?;
        let types = builder
            .schema()
            .fields()
            .iter()
            .map(|field| (field.name().clone(), arrow_column_type(field.data_type())))
            .collect();
        return Ok(Some(SourceColumns {
            types,
            origin: format!("the columns of {}", path.display()),
        }));
    }
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|error| format!("source.path: cannot read {}: {error}", path.display()))?;
        if read == 0 {
            return Err(format!("source.path: {} holds no record", path.display()));
        }
        let text = line.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        let record: Value =
            serde_json::from_str(text).map_err(
                |error| match crate::source::lines::csv_header_hint(text) {
                    Some(hint) => {
                        format!("source.path: the first line of {} {hint}", path.display())
                    }
                    None => format!(
                        "source.path: the first record of {} is not JSON ({error})",
                        path.display()
                    ),
                },
            )?;
        let Value::Object(fields) = record else {
            return Err(format!(
                "source.path: the first record of {} is not a JSON object",
                path.display()
            ));
        };
        let types = fields
            .iter()
            .map(|(name, value)| (name.clone(), json_column_type(value)))
            .collect();
        return Ok(Some(SourceColumns {
            types,
            origin: format!("the first record of {}", path.display()),
        }));
    }
}

fn arrow_column_type(data_type: &DataType) -> ColumnType {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => ColumnType::Integer,
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            ColumnType::Number
        }
        DataType::Boolean => ColumnType::Boolean,
        DataType::List(item) | DataType::LargeList(item)
            if matches!(
                item.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            ColumnType::StringList
        }
        _ => ColumnType::String,
    }
}

fn json_column_type(value: &Value) -> ColumnType {
    match value {
        Value::Number(number) if number.is_i64() || number.is_u64() => ColumnType::Integer,
        Value::Number(_) => ColumnType::Number,
        Value::Bool(_) => ColumnType::Boolean,
        Value::Array(items) if items.iter().all(Value::is_string) => ColumnType::StringList,
        _ => ColumnType::String,
    }
}

/// Every column the template, id and passthrough name that the source does not have.
pub fn check_columns(pipeline: &Pipeline, columns: &SourceColumns) -> Vec<String> {
    let Some(shape) = &pipeline.shape else {
        return Vec::new();
    };
    let mut available: Vec<&str> = columns.types.keys().map(String::as_str).collect();
    available.sort_unstable();
    let mut problems = Vec::new();
    let mut report = |key: &str, column: &str| {
        if !columns.types.contains_key(column) {
            problems.push(format!(
                "{key}: column {column:?} is not in {} (it has: {})",
                columns.origin,
                available.join(", ")
            ));
        }
    };
    for column in shape.prompt.columns() {
        report("request.prompt", column);
    }
    if let Some(column) = &shape.id_column {
        report("source.id_column", column);
    }
    for column in &shape.passthrough {
        report("source.passthrough", column);
    }
    problems
}

/// The results columns the pipeline adds: passthrough columns typed as in the source (text when
/// unknown), then the output schema's fields.
pub fn extra_columns(pipeline: &Pipeline, columns: Option<&SourceColumns>) -> ExtraColumns {
    let Some(shape) = &pipeline.shape else {
        return ExtraColumns::default();
    };
    ExtraColumns {
        passthrough: shape
            .passthrough
            .iter()
            .map(|name| {
                let kind = columns
                    .and_then(|columns| columns.types.get(name).cloned())
                    .unwrap_or(ColumnType::String);
                (name.clone(), kind)
            })
            .collect(),
        output: shape
            .output
            .as_ref()
            .map(|schema| schema.fields.clone())
            .unwrap_or_default(),
    }
}

/// Human-readable description of the results columns a pipeline adds.
pub fn describe_columns(extras: &ExtraColumns) -> String {
    let describe = |kind: &ColumnType| match kind {
        ColumnType::String => "string".to_owned(),
        ColumnType::Enum(choices) => format!("string ({})", choices.join(" | ")),
        ColumnType::Integer => "int64".to_owned(),
        ColumnType::Number => "float64".to_owned(),
        ColumnType::Boolean => "boolean".to_owned(),
        ColumnType::StringList => "list<string>".to_owned(),
    };
    let mut lines = Vec::new();
    for (name, kind) in &extras.passthrough {
        lines.push(format!("  {name}: {} (passthrough)", describe(kind)));
    }
    for field in &extras.output {
        let required = if field.required { ", required" } else { "" };
        lines.push(format!(
            "  {}: {} (output{required})",
            field.name,
            describe(&field.kind)
        ));
    }
    lines.join("\n")
}

/// Where a relative path in a pipeline file is resolved from.
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Loads a pipeline file and checks it as far as can be done without the backend: `Ok(Err)`
/// lists every problem found; `Err` is a file that cannot be read or parsed at all.
pub fn load_checked(
    file: &Path,
    sets: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Result<(Pipeline, ExtraColumns), Vec<String>>, ConfigError> {
    let loaded = config::load(file, sets, env)?;
    Ok(check_loaded(file, &loaded))
}

/// Loads a served pipeline (a file with `[serve]`) and checks it without I/O: `Ok(Err)` lists
/// every problem found.
pub fn load_served(
    file: &Path,
    sets: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Result<ServePipeline, Vec<String>>, ConfigError> {
    let loaded = config::load_serve(file, sets, env)?;
    Ok(config::resolve_serve(&loaded, folder_of(file)))
}

/// [`load_checked`]'s checks of a pipeline already loaded from `file`.
fn check_loaded(
    file: &Path,
    loaded: &PipelineFile,
) -> Result<(Pipeline, ExtraColumns), Vec<String>> {
    check_built(loaded, folder_of(file))
}

/// The same checks of a pipeline made some other way (from a run's flags): relative paths
/// are relative to `folder`.
pub fn check_built(
    loaded: &PipelineFile,
    folder: &Path,
) -> Result<(Pipeline, ExtraColumns), Vec<String>> {
    // `run` takes a pipeline of stages whole (`stages`); what takes one request (`tune`,
    // `plan`) takes its first stage, the one every record goes through.
    if let Some(checked) = stages::check_stages(loaded, folder) {
        let first = checked?.into_iter().next().ok_or_else(Vec::new)?;
        tracing::warn!(
            "Taking the first stage, {:?}, of this pipeline of stages: the stages after it read only the rows that pass it.",
            first.plan.name
        );
        return Ok((first.pipeline, first.extras));
    }
    let pipeline = config::resolve(loaded, folder)?;
    let columns = source_columns(&pipeline).map_err(|problem| vec![problem])?;
    if let Some(columns) = &columns {
        let problems = check_columns(&pipeline, columns);
        if !problems.is_empty() {
            return Err(problems);
        }
    }
    let extras = extra_columns(&pipeline, columns.as_ref());
    Ok((pipeline, extras))
}

/// `batchflow validate`: every check, the backend's too unless `offline` (or the pipeline uses
/// the built-in mock), with `flags` laid over the file's options as a run lays them. A summary
/// when valid, else every problem. A served pipeline (one with `[serve]`) is checked as
/// `batchflow serve FILE` would take it.
pub async fn validate(
    file: &Path,
    sets: &[String],
    offline: bool,
    flags: impl Fn(&mut RunOptions),
    env: impl Fn(&str) -> Option<String> + Copy,
) -> Result<Result<String, Vec<String>>, Error> {
    let loaded = match config::load_any(file, sets, env)? {
        AnyPipelineFile::Serve(served) => {
            return validate_served(file, &served, offline, flags, env).await;
        }
        AnyPipelineFile::Run(loaded) => loaded,
    };
    if let Some(checked) = stages::check_stages(&loaded, folder_of(file)) {
        return stages::validate_stages(file, checked, offline, flags, env).await;
    }
    let (pipeline, extras) = match check_loaded(file, &loaded) {
        Ok(checked) => checked,
        Err(problems) => return Ok(Err(problems)),
    };
    if !offline && !pipeline.backend.mock {
        let mut options = RunOptions::default();
        pipeline.apply(&mut options);
        options.extras = extras.clone();
        flags(&mut options);
        let problems = check_backends(options, env).await;
        if !problems.is_empty() {
            return Ok(Err(problems));
        }
    }
    let source = pipeline
        .input
        .as_ref()
        .map_or("stdin".to_owned(), |path| path.display().to_string());
    let results = pipeline
        .parquet
        .as_ref()
        .map_or("JSONL".to_owned(), |path| path.display().to_string());
    let mut summary = format!("{} is valid: {source} -> {results}\n", file.display());
    let added = describe_columns(&extras);
    if !added.is_empty() {
        let _ = writeln!(summary, "Columns added to the results:\n{added}");
    }
    Ok(Ok(summary))
}

async fn validate_served(
    file: &Path,
    loaded: &ServeFile,
    offline: bool,
    flags: impl FnOnce(&mut RunOptions),
    env: impl Fn(&str) -> Option<String> + Copy,
) -> Result<Result<String, Vec<String>>, Error> {
    let served = match config::resolve_serve(loaded, folder_of(file)) {
        Ok(served) => served,
        Err(problems) => return Ok(Err(problems)),
    };
    if let Some(name) = served.api_key_env.as_deref() {
        if env(name).is_none_or(|key| key.is_empty()) {
            return Ok(Err(vec![format!(
                "serve.api_key_env: the variable {name} is not set"
            )]));
        }
    }
    if !offline && !served.backend.mock {
        let mut options = RunOptions::default();
        served.apply(&mut options);
        flags(&mut options);
        let problems = check_backends(options, env).await;
        if !problems.is_empty() {
            return Ok(Err(problems));
        }
    }
    let listen = served
        .listen
        .map_or_else(|| "the default address".to_owned(), |addr| addr.to_string());
    Ok(Ok(format!(
        "{} is valid: serves the Batch API on {listen}, keeping its state in {}\n",
        file.display(),
        served.data_dir.display()
    )))
}

/// Preflight of every backend `options` name, and of the model the requests name when there
/// is one: every problem found.
pub(crate) async fn check_backends(
    options: RunOptions,
    env: impl Fn(&str) -> Option<String> + Copy,
) -> Vec<String> {
    let console = Console {
        quiet: true,
        stderr_is_terminal: false,
    };
    let config = match options.resolve(console, None, env) {
        Ok(config) => config,
        Err(error) => return vec![format!("backend: {error}")],
    };
    let model = config.source.named_model().map(str::to_owned);
    let mut problems = Vec::new();
    for backend_config in config.backends {
        let url = backend_config.base_url.clone();
        match HttpBackend::new(backend_config) {
            Err(error) => problems.push(format!("backend: {error}")),
            Ok(backend) => match preflight::check(&backend, &config.knobs).await {
                Err(error) => problems.push(format!("backend: {error}")),
                Ok(catalog) => {
                    if let Some(model) = model.as_deref().filter(|model| !catalog.has(model)) {
                        problems.push(format!("request.model: {}", catalog.missing(&url, model)));
                    }
                }
            },
        }
    }
    problems
}

/// `run --dry-run`: the first rendered requests and the results columns; calls nothing.
pub async fn dry_run(config: RunConfig, extras: &ExtraColumns) -> Result<String, Error> {
    const SHOWN: usize = 3;
    let input = source::open_for(config.input, &config.source)?;
    let (sender, mut items) = tokio::sync::mpsc::channel(SHOWN);
    let _reader = source::spawn(
        input,
        config.source,
        sender,
        crate::shutdown::Shutdown::new(),
    )?;
    let mut out = String::from("First requests (not sent):\n");
    for _ in 0..SHOWN {
        let Some(item) = items.recv().await else {
            break;
        };
        match item {
            SourceItem::Request(request) => {
                let body: Value = serde_json::from_slice(&request.body)
                    .map_err(|error| Error::Internal(error.to_string()))?;
                let line = serde_json::json!({
                    "custom_id": request.custom_id, "method": "POST", "url": request.url, "body": body,
                });
                let pretty = serde_json::to_string_pretty(&line)
                    .map_err(|error| Error::Internal(error.to_string()))?;
                let _ = writeln!(out, "{pretty}");
            }
            SourceItem::Invalid(invalid) => {
                let _ = writeln!(out, "invalid: {}", invalid.message);
            }
        }
    }
    match &config.results {
        Some(output) => {
            let _ = writeln!(out, "Results: {}", output.path.display());
        }
        None => out.push_str("Results: JSONL only\n"),
    }
    let added = describe_columns(extras);
    if !added.is_empty() {
        let _ = writeln!(out, "Columns added to the results:\n{added}");
    }
    Ok(out)
}
