//! A loaded pipeline file checked and resolved, without any I/O, into a [`Pipeline`]: every
//! problem listed with its key, one function per section (`[request]` into a record shape or
//! the requests-mode model, `[backend]`, `[sink]`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{
    BackendSection, DurationValue, ENDPOINTS, PipelineFile, SinkSection, SourceFormat, WorkersValue,
};
use crate::options::{RunOptions, Workers};
use crate::paths::Knobs;
use crate::schema::OutputSchema;
use crate::sink::checkpoint::Codec;
use crate::sink::results;
use crate::source::Input;
use crate::source::template::{RecordShape, Template};

/// A pipeline whose fields are checked and resolved, ready to become a run.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// `None` reads stdin.
    pub input: Option<PathBuf>,
    /// Records mode; `None` for OpenAI Batch request lines.
    pub shape: Option<Arc<RecordShape>>,
    /// Requests mode: replaces each line's model.
    pub model_override: Option<String>,
    pub output_retries: u32,
    pub backend: BackendSection,
    pub workers: Option<Workers>,
    pub timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub retry_base: Option<Duration>,
    pub retry_max: Option<Duration>,
    pub jsonl: Option<JsonlTarget>,
    pub parquet: Option<PathBuf>,
    pub checkpoint_rows: Option<u64>,
    pub checkpoint_interval: Option<Duration>,
    pub codec: Codec,
    pub keep_raw: bool,
    pub ordered: bool,
    pub stats: Option<PathBuf>,
    pub live_status: bool,
    pub errors: Option<PathBuf>,
}

/// Where JSONL output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonlTarget {
    Stdout,
    File(PathBuf),
}

impl Pipeline {
    /// The output schema, if the pipeline asks for structured output.
    pub fn output_schema(&self) -> Option<&Arc<OutputSchema>> {
        self.shape
            .as_deref()
            .and_then(|shape| shape.output.as_ref())
    }

    /// Lays the pipeline's values over `options` (what it leaves unset stays as it was), and
    /// names the knobs by their keys for messages.
    pub fn apply(&self, options: &mut RunOptions) {
        options.input = Input::from_arg(self.input.clone());
        options.records = self.shape.clone();
        options.model = self.model_override.clone();
        options.output_retries = self.output_retries;
        let backend = BackendParts {
            workers: self.workers,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
        };
        backend.apply(&self.backend, options);
        options.ordered = self.ordered;
        options.results = self.parquet.clone();
        options.checkpoint_rows = self.checkpoint_rows.unwrap_or(options.checkpoint_rows);
        options.checkpoint_interval = self
            .checkpoint_interval
            .unwrap_or(options.checkpoint_interval);
        options.codec = self.codec;
        options.keep_raw = self.keep_raw;
        options.jsonl_file = match &self.jsonl {
            Some(JsonlTarget::File(path)) => Some(path.clone()),
            Some(JsonlTarget::Stdout) | None => None,
        };
        options.stats_file = self.stats.clone().or(options.stats_file.take());
        options.live_status = self.live_status;
        options.errors_file = self.errors.clone().or(options.errors_file.take());
        options.knobs = Knobs::pipeline();
    }
}

/// Checks a loaded file without any I/O; `folder` resolves relative paths. Every problem is
/// listed.
pub fn resolve(file: &PipelineFile, folder: &Path) -> Result<Pipeline, Vec<String>> {
    let mut problems = Vec::new();
    let path = |text: &str| relative_to(folder, text);
    let request = resolve_request(file, &mut problems);
    let backend = resolve_backend(&file.backend, &mut problems);
    let sink = resolve_sink(&file.sink, &path, &mut problems);
    let pipeline = Pipeline {
        input: (file.source.path != "-").then(|| path(&file.source.path)),
        shape: request.shape,
        model_override: request.model_override,
        output_retries: request.output_retries,
        backend: file.backend.clone(),
        workers: backend.workers,
        timeout: backend.timeout,
        connect_timeout: backend.connect_timeout,
        retry_base: backend.retry_base,
        retry_max: backend.retry_max,
        jsonl: sink.jsonl,
        parquet: sink.parquet,
        checkpoint_rows: sink.checkpoint_rows,
        checkpoint_interval: sink.checkpoint_interval,
        codec: sink.codec,
        keep_raw: sink.keep_raw,
        ordered: sink.ordered,
        stats: sink.stats,
        live_status: sink.live_status,
        errors: sink.errors,
    };
    if problems.is_empty() {
        Ok(pipeline)
    } else {
        Err(problems)
    }
}

/// A path the file gives, relative to the file's `folder` unless it is absolute. A URL
/// (object storage, file://) is where it says, whatever folder the file is in.
pub(super) fn relative_to(folder: &Path, text: &str) -> PathBuf {
    let path = PathBuf::from(text);
    if path.is_absolute() || text.contains("://") {
        path
    } else {
        folder.join(path)
    }
}

/// What `[request]` (with `[source]`'s record keys) resolves to.
struct RequestParts {
    shape: Option<Arc<RecordShape>>,
    model_override: Option<String>,
    output_retries: u32,
}

fn resolve_request(file: &PipelineFile, problems: &mut Vec<String>) -> RequestParts {
    let request = &file.request;
    let endpoint = request
        .endpoint
        .clone()
        .unwrap_or_else(|| "/api/chat".to_owned());
    if !ENDPOINTS.contains(&endpoint.as_str()) {
        problems.push(format!(
            "request.endpoint: {endpoint:?} is not one of {}",
            ENDPOINTS.join(", ")
        ));
    }
    let output = output_schema(file, &endpoint, problems);
    let (shape, model_override) = match file.source.format {
        SourceFormat::Requests => {
            refuse_record_keys(file, problems);
            (None, request.model.clone())
        }
        SourceFormat::Records => (record_shape(file, endpoint, output, problems), None),
    };
    RequestParts {
        shape,
        model_override,
        output_retries: request
            .output
            .as_ref()
            .and_then(|output| output.retries)
            .unwrap_or(2),
    }
}

/// `[request.output] schema`, checked, and only for an endpoint whose reply is text.
fn output_schema(
    file: &PipelineFile,
    endpoint: &str,
    problems: &mut Vec<String>,
) -> Option<Arc<OutputSchema>> {
    let output = file.request.output.as_ref().and_then(|output| {
        match OutputSchema::from_json(output.schema.clone()) {
            Ok(schema) => Some(Arc::new(schema)),
            Err(why) => {
                problems.extend(
                    why.into_iter()
                        .map(|problem| format!("request.output.schema: {problem}")),
                );
                None
            }
        }
    });
    if output.is_some() && endpoint.contains("embed") {
        problems.push(format!(
            "request.output: {endpoint} returns embeddings, not text to structure"
        ));
    }
    output
}

/// Request lines name their own endpoint and body: the keys that shape records are refused.
fn refuse_record_keys(file: &PipelineFile, problems: &mut Vec<String>) {
    let request = &file.request;
    for (key, set) in [
        ("request.prompt", request.prompt.is_some()),
        ("request.output", request.output.is_some()),
        ("request.system", request.system.is_some()),
        ("request.endpoint", request.endpoint.is_some()),
        ("request.options", request.options.is_some()),
        ("request.keep_alive", request.keep_alive.is_some()),
        ("request.think", request.think.is_some()),
        ("source.id_column", file.source.id_column.is_some()),
        ("source.passthrough", !file.source.passthrough.is_empty()),
    ] {
        if set {
            problems.push(format!(
                "{key} applies to records; source.format is \"requests\""
            ));
        }
    }
}

/// How each record becomes a request: the template, the model, and the extra columns, none
/// of which may clash with a results column or with each other.
fn record_shape(
    file: &PipelineFile,
    endpoint: String,
    output: Option<Arc<OutputSchema>>,
    problems: &mut Vec<String>,
) -> Option<Arc<RecordShape>> {
    let request = &file.request;
    let prompt = match request.prompt.as_deref().map(Template::parse) {
        Some(Ok(template)) => Some(template),
        Some(Err(why)) => {
            problems.push(format!("request.prompt: {why}"));
            None
        }
        None => {
            problems.push("request.prompt is required to turn records into requests".into());
            None
        }
    };
    if request.model.is_none() {
        problems.push("request.model is required".into());
    }
    let fixed = results::fixed_column_names();
    let output_names = output
        .iter()
        .flat_map(|schema| schema.fields.iter().map(|field| field.name.clone()));
    let mut seen = std::collections::HashSet::new();
    for name in file.source.passthrough.iter().cloned().chain(output_names) {
        if fixed.contains(&name) {
            problems.push(format!("column {name:?} (passthrough or output field) clashes with a results column of the same name"));
        } else if !seen.insert(name.clone()) {
            problems.push(format!(
                "column {name:?} is both a passthrough column and an output field"
            ));
        }
    }
    prompt.map(|prompt| {
        Arc::new(RecordShape {
            endpoint,
            model: request.model.clone().unwrap_or_default(),
            system: request.system.clone(),
            prompt,
            options: request.options.clone().unwrap_or_default(),
            keep_alive: request.keep_alive.clone(),
            think: request.think.clone(),
            output,
            id_column: file.source.id_column.clone(),
            passthrough: file.source.passthrough.clone(),
        })
    })
}

/// What `[backend]` resolves to beside the section itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct BackendParts {
    workers: Option<Workers>,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    retry_base: Option<Duration>,
    retry_max: Option<Duration>,
}

impl BackendParts {
    /// Lays `[backend]` over `options`: what it leaves unset stays as it was.
    pub(super) fn apply(&self, backend: &BackendSection, options: &mut RunOptions) {
        options.backends = backend.url.iter().chain(&backend.urls).cloned().collect();
        options.api_key_env = backend.api_key_env.clone();
        options.workers = self.workers.unwrap_or(options.workers);
        options.timeout = self.timeout.unwrap_or(options.timeout);
        options.connect_timeout = self.connect_timeout.unwrap_or(options.connect_timeout);
        let retry = &mut options.retry;
        retry.max_retries = backend.retries.unwrap_or(retry.max_retries);
        retry.base_delay = self.retry_base.unwrap_or(retry.base_delay);
        retry.max_delay = self.retry_max.unwrap_or(retry.max_delay);
        options.preflight = backend.preflight.unwrap_or(options.preflight);
    }
}

pub(super) fn resolve_backend(
    backend: &BackendSection,
    problems: &mut Vec<String>,
) -> BackendParts {
    if backend.mock && (backend.url.is_some() || !backend.urls.is_empty()) {
        problems.push("backend: set url(s) or mock = true, not both".into());
    }
    let workers = backend.workers.as_ref().and_then(|value| {
        let parsed = match value {
            WorkersValue::Count(count) => Workers::parse(&count.to_string()),
            WorkersValue::Text(text) => Workers::parse(text),
        };
        parsed
            .map_err(|why| problems.push(format!("backend.workers: {why}")))
            .ok()
    });
    let mut duration = |value: &Option<DurationValue>, key: &str| {
        value
            .as_ref()
            .and_then(|value| value.resolve(key, problems))
    };
    BackendParts {
        workers,
        timeout: duration(&backend.timeout, "backend.timeout"),
        connect_timeout: duration(&backend.connect_timeout, "backend.connect_timeout"),
        retry_base: duration(&backend.retry_base, "backend.retry_base"),
        retry_max: duration(&backend.retry_max, "backend.retry_max"),
    }
}

/// What `[sink]` resolves to.
struct SinkParts {
    jsonl: Option<JsonlTarget>,
    parquet: Option<PathBuf>,
    checkpoint_rows: Option<u64>,
    checkpoint_interval: Option<Duration>,
    codec: Codec,
    keep_raw: bool,
    ordered: bool,
    stats: Option<PathBuf>,
    live_status: bool,
    errors: Option<PathBuf>,
}

fn resolve_sink(
    sink: &SinkSection,
    path: &impl Fn(&str) -> PathBuf,
    problems: &mut Vec<String>,
) -> SinkParts {
    let codec = match sink.compression.as_deref() {
        None => Codec::default(),
        Some(name) => Codec::parse(name).unwrap_or_else(|| {
            problems.push(format!(
                "sink.compression: {name:?} is not zstd, snappy or none"
            ));
            Codec::default()
        }),
    };
    let parquet = sink.parquet.as_deref().map(path);
    if let Some(parquet) = &parquet {
        let names_dataset = sink
            .parquet
            .as_deref()
            .is_some_and(|text| text.ends_with('/'));
        if !names_dataset
            && parquet
                .extension()
                .is_none_or(|extension| !extension.eq_ignore_ascii_case("parquet"))
        {
            problems.push(format!(
                "sink.parquet: {} must end in .parquet (or in / for a dataset directory)",
                parquet.display()
            ));
        }
    }
    if sink.checkpoint_rows == Some(0) {
        problems.push("sink.checkpoint_rows must be at least 1".into());
    }
    let jsonl = match sink.jsonl.as_deref() {
        Some("-") => Some(JsonlTarget::Stdout),
        Some(file) => Some(JsonlTarget::File(path(file))),
        None if parquet.is_none() => Some(JsonlTarget::Stdout),
        None => None,
    };
    SinkParts {
        jsonl,
        parquet,
        checkpoint_rows: sink.checkpoint_rows,
        checkpoint_interval: sink
            .checkpoint_secs
            .as_ref()
            .and_then(|value| value.resolve("sink.checkpoint_secs", problems)),
        codec,
        keep_raw: sink.raw.unwrap_or(true),
        ordered: sink.ordered.unwrap_or(false),
        stats: sink.stats.as_deref().map(path),
        live_status: sink.live_status.unwrap_or(true),
        errors: sink.errors.as_deref().map(path),
    }
}
