//! Records on the command line (`batchflow INPUT --prompt …`): the pipeline file those flags
//! describe, so that a run from flags and `run FILE.toml` are one run with one meaning, and
//! `--save-pipeline` can write that file for next time.

use std::path::{Path, PathBuf};

use batchflow::config::{
    BackendSection, DurationValue, OutputSection, PipelineFile, RequestSection, SinkSection,
    SourceFormat, SourceSection, WorkersValue,
};
use batchflow::options::Workers;

use super::run::{BackendArgs, Given, RecordArgs, RunKnobs};

impl RecordArgs {
    /// The pipeline these flags describe over `input` (standard input when `None`), with the
    /// backend flags and a run's other knobs (`run`, none for a measurement) that `given`
    /// holds written into its `[backend]` and `[sink]`. Paths are written relative to
    /// `folder`, where the file would be saved (the current folder when it is not saved). A
    /// problem names the flag.
    pub fn pipeline(
        &self,
        input: Option<&Path>,
        backend: &BackendArgs,
        run: Option<&RunKnobs>,
        given: &Given,
        folder: &Path,
    ) -> Result<PipelineFile, String> {
        let model = backend.model.clone().ok_or(
            "--prompt needs --model NAME: the model that answers each record (for example \
             --model qwen2.5:7b; with --mock any name is answered)",
        )?;
        let schema = match &self.schema {
            Some(path) => Some(read_schema(path)?),
            None => None,
        };
        let place = |path: &Path| placed(path, folder);
        let source = SourceSection {
            path: input.map_or("-".to_owned(), place),
            format: SourceFormat::Records,
            id_column: self.id_column.clone(),
            passthrough: self.passthrough.clone(),
        };
        let request = RequestSection {
            endpoint: self.endpoint.clone(),
            model: Some(model),
            system: self.system.clone(),
            prompt: self.prompt.clone(),
            output: schema.map(|schema| OutputSection {
                schema,
                retries: None,
            }),
            ..RequestSection::default()
        };
        let (url, urls) = match backend.backend.as_slice() {
            [] => (None, Vec::new()),
            [one] => (Some(one.clone()), Vec::new()),
            several => (None, several.to_vec()),
        };
        let backend = BackendSection {
            url,
            urls,
            mock: backend.mock,
            api_key_env: backend.api_key_env.clone(),
            workers: run
                .filter(|_| given.has("workers"))
                .map(|run| match run.workers {
                    Workers::Auto => WorkersValue::Text("auto".into()),
                    Workers::Fixed(count) => WorkersValue::Count(count),
                }),
            timeout: given.has("timeout").then(|| {
                DurationValue::Text(humantime::format_duration(backend.timeout.0).to_string())
            }),
            retries: given.has("retries").then_some(backend.retries),
            preflight: backend.no_preflight.then_some(false),
            ..BackendSection::default()
        };
        let sink = run.map_or_else(SinkSection::default, |run| sink(run, given, &place));
        Ok(PipelineFile {
            source,
            request,
            backend,
            sink,
            stages: Vec::new(),
        })
    }
}

/// A run's `[sink]`: its results flags as the file would say them.
fn sink(run: &RunKnobs, given: &Given, place: &impl Fn(&Path) -> String) -> SinkSection {
    let output = &run.output;
    SinkSection {
        jsonl: (output.output.is_none() || output.jsonl).then(|| "-".to_owned()),
        parquet: output.output.as_deref().map(|path| {
            // A dataset directory is named by its trailing slash, which must survive placing.
            let placed = place(path);
            match path.to_string_lossy().ends_with('/') && !placed.ends_with('/') {
                true => format!("{placed}/"),
                false => placed,
            }
        }),
        errors: output.errors.as_deref().map(place),
        stats: run.watch.stats.as_deref().map(place),
        live_status: run.watch.no_live_status.then_some(false),
        ordered: output.ordered.then_some(true),
        raw: output.no_raw.then_some(false),
        checkpoint_rows: given
            .has("checkpoint_rows")
            .then_some(output.checkpoint_rows),
        ..SinkSection::default()
    }
}

/// The folder a saved pipeline's relative paths are read from: the file's own.
pub fn folder_of_saved(save: Option<&Path>) -> PathBuf {
    match save.and_then(Path::parent) {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `path` as a pipeline file in `folder` names it: unchanged when the file is in the current
/// folder or the path is absolute, else absolute (relative to the current folder).
fn placed(path: &Path, folder: &Path) -> String {
    let stays = path.is_absolute() || folder == Path::new(".");
    let path = match stays {
        true => path.to_owned(),
        false => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    };
    path.to_string_lossy().into_owned()
}

fn read_schema(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("--schema {}: {error}", path.display()))?;
    let schema: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| format!("--schema {}: not JSON ({error})", path.display()))?;
    match schema.is_object() {
        true => Ok(schema),
        false => Err(format!(
            "--schema {}: a JSON schema is an object ({{\"type\": \"object\", \"properties\": …}})",
            path.display()
        )),
    }
}
