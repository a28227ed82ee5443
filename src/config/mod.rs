//! Pipeline files: a whole batch job described in TOML (`batchflow run FILE`,
//! `batchflow validate FILE`), or a served one, whose `[serve]` section describes
//! `batchflow serve FILE` (`serve.rs`). This module owns the files' structure (unknown keys
//! rejected with the line named), `${ENV}` interpolation, `--set key.path=value` overrides,
//! and the pure checks of a loaded file, which list every problem rather than stopping at the
//! first. Checks that need the input or the backend live in `validate`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod interpolate;
mod resolve;
mod serve;
pub mod stages;

pub use resolve::{JsonlTarget, Pipeline, resolve};
pub use serve::{ServeFile, ServePipeline, ServeSection, ServeSinkSection, resolve_serve};

use crate::options::parse_duration;
use interpolate::interpolate;

/// The endpoints a pipeline's `[request]` may target.
pub const ENDPOINTS: [&str; 5] = [
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/v1/chat/completions",
    "/v1/embeddings",
];

/// A pipeline file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub source: SourceSection,
    #[serde(default)]
    pub request: RequestSection,
    #[serde(default)]
    pub backend: BackendSection,
    #[serde(default)]
    pub sink: SinkSection,
    /// `[[stage]]`: several requests in a row, each over the rows of an earlier one that pass
    /// its filter (`stages.rs`); empty for a one-request pipeline, whose `[request]` says it.
    #[serde(default, rename = "stage", skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSection>,
}

/// `[source]`: where the records or requests come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// A JSONL or Parquet file (relative to the pipeline file's folder), or `-` for stdin.
    pub path: String,
    /// `records` (any columns, shaped by `[request]`) or `requests` (OpenAI Batch lines).
    #[serde(default)]
    pub format: SourceFormat,
    /// Records: the column giving each record's custom_id; without it, an id is derived from
    /// the record's content.
    pub id_column: Option<String>,
    /// Records: columns copied into the results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    #[default]
    Records,
    Requests,
}

/// `[request]`: how each record becomes a request.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSection {
    /// One of [`ENDPOINTS`]; default `/api/chat`.
    pub endpoint: Option<String>,
    /// Required for records; for requests, replaces each line's model.
    pub model: Option<String>,
    pub system: Option<String>,
    /// Template with `{{column}}` placeholders.
    pub prompt: Option<String>,
    /// Ollama `options` (temperature, num_ctx, seed, …).
    pub options: Option<serde_json::Map<String, Value>>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
    pub output: Option<OutputSection>,
}

/// `[[stage]]`: one stage of a pipeline of stages: a request like `[request]`'s, over the
/// file's `[source]` (the first stage) or over the rows of an earlier stage (`from`) that pass
/// `where`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    /// Names the stage's results (`<sink.parquet>/<name>.parquet`), its columns in later
    /// stages (`{{name.column}}`) and its figures.
    pub name: String,
    /// The earlier stage whose rows this one reads; none for the first stage.
    pub from: Option<String>,
    /// Which of those rows: a filter over their columns (`fit != 'weak' and score >= 7`).
    #[serde(rename = "where")]
    pub filter: Option<String>,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub system: Option<String>,
    pub prompt: Option<String>,
    pub options: Option<serde_json::Map<String, Value>>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
    pub output: Option<OutputSection>,
}

impl StageSection {
    /// The stage's request as a `[request]` section.
    pub fn request(&self) -> RequestSection {
        RequestSection {
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            system: self.system.clone(),
            prompt: self.prompt.clone(),
            options: self.options.clone(),
            keep_alive: self.keep_alive.clone(),
            think: self.think.clone(),
            output: self.output.clone(),
        }
    }
}

impl RequestSection {
    /// Whether the file wrote any key of `[request]`.
    pub fn is_written(&self) -> bool {
        self.endpoint.is_some()
            || self.model.is_some()
            || self.system.is_some()
            || self.prompt.is_some()
            || self.options.is_some()
            || self.keep_alive.is_some()
            || self.think.is_some()
            || self.output.is_some()
    }
}

/// `[request.output]`: structured output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// A JSON schema whose properties become typed columns.
    pub schema: Value,
    /// New attempts for a reply that breaks the schema; default 2.
    pub retries: Option<u32>,
}

/// `workers = 8` or `workers = "auto"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum WorkersValue {
    Count(u32),
    Text(String),
}

/// A duration as seconds or as text such as `90s` or `10m`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(f64),
    Text(String),
}

impl DurationValue {
    fn resolve(&self, key: &str, problems: &mut Vec<String>) -> Option<Duration> {
        let parsed = match self {
            DurationValue::Seconds(seconds) => parse_duration(&seconds.to_string()),
            DurationValue::Text(text) => parse_duration(text),
        };
        parsed
            .map_err(|why| problems.push(format!("{key}: {why}")))
            .ok()
    }
}

/// `[backend]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// Base URL (the forms `OLLAMA_HOST` accepts); default `$OLLAMA_HOST`, else 127.0.0.1:11434.
    pub url: Option<String>,
    /// Several base URLs: the batch is spread over them (each gets `workers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Use the built-in mock server instead (a dry run without a GPU).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mock: bool,
    pub api_key_env: Option<String>,
    /// A count, or `"auto"`.
    pub workers: Option<WorkersValue>,
    pub timeout: Option<DurationValue>,
    pub connect_timeout: Option<DurationValue>,
    pub retries: Option<u32>,
    pub retry_base: Option<DurationValue>,
    pub retry_max: Option<DurationValue>,
    /// Check the backend and model before reading input; default true.
    pub preflight: Option<bool>,
}

/// `[sink]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// OpenAI Batch JSONL output: `-` for stdout, or a path.
    pub jsonl: Option<String>,
    /// Parquet results file (relative to the pipeline file's folder).
    pub parquet: Option<String>,
    pub checkpoint_rows: Option<u64>,
    pub checkpoint_secs: Option<DurationValue>,
    /// `zstd` (default), `snappy` or `none`.
    pub compression: Option<String>,
    /// Keep the raw response JSON; default true.
    pub raw: Option<bool>,
    /// Write JSONL in input order; default false.
    pub ordered: Option<bool>,
    /// A `--stats` JSON file.
    pub stats: Option<String>,
    /// Keep the live-status file beside the results that `batchflow status` reads; default
    /// true (`--no-live-status` is false).
    pub live_status: Option<bool>,
    /// An `--errors` JSONL file: every request that ends in error and every invalid line.
    pub errors: Option<String>,
}

/// Why a pipeline file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A `--set` the file cannot take: the fault is the flag's, not the file's.
    #[error("--set {set}: {message}")]
    Set { set: String, message: String },
}

/// A loaded file: a pipeline to run, or one to serve (it has a `[serve]` section).
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "one is made per command, and read at once"
)]
pub enum AnyPipelineFile {
    Run(PipelineFile),
    Serve(ServeFile),
}

/// Reads a pipeline to run; a served pipeline is refused with the command that takes it.
pub fn load(
    path: &Path,
    sets: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<PipelineFile, ConfigError> {
    match load_any(path, sets, env)? {
        AnyPipelineFile::Run(file) => Ok(file),
        AnyPipelineFile::Serve(_) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            message: "its [serve] section describes a server: start it with `batchflow serve FILE`"
                .into(),
        }),
    }
}

/// Reads a served pipeline; a file without a `[serve]` section is refused.
pub fn load_serve(
    path: &Path,
    sets: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<ServeFile, ConfigError> {
    match load_any(path, sets, env)? {
        AnyPipelineFile::Serve(file) => Ok(file),
        AnyPipelineFile::Run(_) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            message: "no [serve] section: `batchflow serve FILE` takes a served pipeline (run this one with `batchflow run FILE`)".into(),
        }),
    }
}

/// Reads a pipeline file of either kind: `${VAR}` replaced from `env` (inside double-quoted
/// strings), parsed with unknown keys refused, then `--set` overrides applied (they win over
/// the file).
pub fn load_any(
    path: &Path,
    sets: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<AnyPipelineFile, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let text = interpolate(&text, &env).map_err(&invalid)?;
    let tree: toml::Table =
        toml::from_str(&text).map_err(|error| invalid(error.to_string().trim_end().to_owned()))?;
    if tree.contains_key("serve") {
        parse(&text, sets, &invalid).map(AnyPipelineFile::Serve)
    } else {
        parse(&text, sets, &invalid).map(AnyPipelineFile::Run)
    }
}

/// Parses `text` as a `T` (the typed parse, so that an error names its line), then applies
/// `sets`.
fn parse<T: DeserializeOwned + Serialize>(
    text: &str,
    sets: &[String],
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<T, ConfigError> {
    let file: T =
        toml::from_str(text).map_err(|error| invalid(error.to_string().trim_end().to_owned()))?;
    if sets.is_empty() {
        return Ok(file);
    }
    let mut tree = toml::Table::try_from(&file).map_err(|error| invalid(error.to_string()))?;
    let blame = |set: &String, message: String| ConfigError::Set {
        set: set.clone(),
        message,
    };
    let mut file = file;
    for set in sets {
        apply_set(&mut tree, set).map_err(|why| blame(set, why))?;
        // Typed after each one, so that a key or a type the file cannot take blames the --set
        // that brought it.
        file = toml::Value::Table(tree.clone())
            .try_into()
            .map_err(|error: toml::de::Error| {
                blame(set, error.to_string().trim_end().replace('\n', " "))
            })?;
    }
    Ok(file)
}

/// The `--set` to blame for `problem`, a check's complaint that starts with the key it is about
/// (`backend.workers: …`): the last `--set` of that key or of a table holding it, since that one
/// won over the file. `None` when the value came from the file.
pub fn blamed_set<'a>(problem: &str, sets: &'a [String]) -> Option<&'a str> {
    sets.iter().rev().map(String::as_str).find(|set| {
        set.split_once('=').is_some_and(|(key, _)| {
            problem
                .strip_prefix(key.trim())
                .is_some_and(|rest| rest.starts_with([':', '.']))
        })
    })
}

/// `key.path=value`: the value is read as TOML (`16`, `true`, `"text"`, `[1, 2]`), or taken as
/// a plain string when it is not valid TOML.
fn apply_set(tree: &mut toml::Table, set: &str) -> Result<(), String> {
    let (key, raw) = set.split_once('=').ok_or("expected key.path=value")?;
    let value = match toml::from_str::<toml::Table>(&format!("value = {raw}")) {
        Ok(mut parsed) => parsed.remove("value").ok_or("no value")?,
        Err(_) => toml::Value::String(raw.to_owned()),
    };
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts
        .pop()
        .filter(|last| !last.is_empty())
        .ok_or("empty key")?;
    let mut table = tree;
    let mut parts = parts.into_iter();
    while let Some(part) = parts.next() {
        let entry = table
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        // An array of tables (`[[stage]]`) is entered by an element's name or position:
        // `stage.extract.where=…`, `stage.0.model=…`.
        let entry = match entry {
            toml::Value::Array(elements) => {
                let chosen = parts.next().ok_or_else(|| {
                    format!("{part} holds several tables: name one ({part}.NAME.key)")
                })?;
                let position = elements.iter().position(|element| {
                    element.get("name").and_then(toml::Value::as_str) == Some(chosen)
                });
                let position = position
                    .or_else(|| chosen.parse::<usize>().ok())
                    .filter(|position| *position < elements.len())
                    .ok_or_else(|| format!("{part} has no {chosen:?} (by name or position)"))?;
                &mut elements[position]
            }
            entry => entry,
        };
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table"))?;
    }
    table.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_enters_an_array_of_tables_by_name_or_position() {
        let mut tree: toml::Table =
            toml::from_str("[[stage]]\nname = \"screen\"\n[[stage]]\nname = \"extract\"\n")
                .expect("toml");
        apply_set(&mut tree, "stage.extract.where=\"score >= 8\"").expect("by name");
        apply_set(&mut tree, "stage.0.model=m").expect("by position");
        let stages = tree["stage"].as_array().expect("an array");
        assert_eq!(stages[1]["where"].as_str(), Some("score >= 8"));
        assert_eq!(stages[0]["model"].as_str(), Some("m"));
        assert!(apply_set(&mut tree, "stage.other.model=m").is_err());
        assert!(
            apply_set(&mut tree, "stage=x").is_ok(),
            "a whole value is replaced"
        );
    }

    #[test]
    fn a_problem_blames_the_last_set_of_its_key_or_table() {
        let sets = [
            "backend.workers=4".to_owned(),
            "backend.workers=0".to_owned(),
            "request={model=\"m\"}".to_owned(),
        ];
        let blamed = |problem| blamed_set(problem, &sets);
        assert_eq!(
            blamed("backend.workers: \"0\" is not"),
            Some("backend.workers=0")
        );
        assert_eq!(
            blamed("request.model: empty"),
            Some("request={model=\"m\"}")
        );
        assert_eq!(blamed("backend.workers_max: too many"), None);
        assert_eq!(blamed("backend.timeout: not a duration"), None);
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("pipeline.toml");
        std::fs::write(&path, text).expect("write");
        path
    }

    const SCREEN: &str = r#"
[source]
path = "candidates.jsonl"
id_column = "id"
passthrough = ["name"]

[request]
model = "${MODEL}"
prompt = "Rate {{name}}"

[request.output]
schema = { type = "object", properties = { score = { type = "integer" } }, required = ["score"] }

[backend]
workers = 4
timeout = "2m"

[sink]
parquet = "out/results.parquet"
"#;

    #[test]
    fn a_file_loads_with_env_and_set_overrides() {
        let dir = tempfile::tempdir().expect("dir");
        let path = write(dir.path(), SCREEN);
        let env = |name: &str| (name == "MODEL").then(|| "qwen3:8b".to_owned());
        let file = load(
            &path,
            &["backend.workers=16".into(), "request.system=Be fair".into()],
            env,
        )
        .expect("loads");
        assert_eq!(file.request.model.as_deref(), Some("qwen3:8b"));
        assert!(
            matches!(file.backend.workers, Some(WorkersValue::Count(16))),
            "the command line wins"
        );
        assert_eq!(file.request.system.as_deref(), Some("Be fair"));
        let pipeline = resolve(&file, dir.path()).expect("valid");
        assert_eq!(pipeline.timeout, Some(Duration::from_secs(120)));
        assert_eq!(
            pipeline.parquet,
            Some(dir.path().join("out/results.parquet"))
        );
        assert_eq!(
            pipeline.jsonl, None,
            "JSONL only when asked once Parquet is set"
        );
        assert_eq!(
            pipeline.output_schema().map(|schema| schema.fields.len()),
            Some(1)
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_the_line_named() {
        let dir = tempfile::tempdir().expect("dir");
        let path = write(dir.path(), &SCREEN.replace("workers = 4", "workerz = 4"));
        let error = load(&path, &[], |_| Some("m".into()))
            .expect_err("unknown key")
            .to_string();
        assert!(
            error.contains("workerz") && error.contains("line 15"),
            "{error}"
        );
        let unset = load(&write(dir.path(), SCREEN), &[], |_| None)
            .expect_err("unset variable")
            .to_string();
        assert!(
            unset.contains("MODEL") && unset.contains("line 8"),
            "{unset}"
        );
    }

    #[test]
    fn only_double_quoted_strings_are_interpolated() {
        let env = |name: &str| (name == "HOST").then(|| r#"a"b\c"#.to_owned());
        let text = concat!(
            "# set ${UNSET} first\n",
            "url = \"http://${HOST}:1\" # or ${UNSET}\n",
            "quoted = \"say \\\" ${HOST}\"\n",
            "literal = '${UNSET}'\n",
            "multi = \"\"\"\none ${HOST}\ntwo\"\"\"\n",
            "raw = '''\n${UNSET}\n'''\n",
        );
        let out = interpolate(text, &env).expect("only HOST is needed");
        let table: toml::Table = toml::from_str(&out).expect("still TOML");
        assert_eq!(table["url"].as_str(), Some(r#"http://a"b\c:1"#));
        assert_eq!(table["quoted"].as_str(), Some(r#"say " a"b\c"#));
        assert_eq!(table["literal"].as_str(), Some("${UNSET}"));
        assert_eq!(table["multi"].as_str(), Some("one a\"b\\c\ntwo"));
        assert_eq!(table["raw"].as_str(), Some("${UNSET}\n"));
        assert!(out.starts_with("# set ${UNSET} first\n"));
        let unset = interpolate("a = 1\n\nb = \"x ${NOPE}\"\n", &env).expect_err("unset");
        assert_eq!(unset, "line 3: environment variable NOPE is not set");
        let open = interpolate("b = \"${NOPE\"\n", &env).expect_err("not closed");
        assert!(open.starts_with("line 1:"), "{open}");
    }

    #[test]
    fn resolve_lists_every_problem() {
        let dir = tempfile::tempdir().expect("dir");
        let broken = SCREEN
            .replace(
                "prompt = \"Rate {{name}}\"",
                "prompt = \"Rate {{name\"\nendpoint = \"/api/nope\"",
            )
            .replace("type = \"integer\"", "type = \"object\"")
            .replace("passthrough = [\"name\"]", "passthrough = [\"status\"]");
        let file = load(&write(dir.path(), &broken), &[], |_| Some("m".into())).expect("parses");
        let problems = resolve(&file, dir.path()).expect_err("invalid");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        for expected in [
            "request.endpoint",
            "request.prompt",
            "output field \"score\"",
            "\"status\"",
        ] {
            assert!(
                problems.iter().any(|problem| problem.contains(expected)),
                "{expected}: {problems:#?}"
            );
        }
    }

    #[test]
    fn record_settings_in_a_requests_pipeline_are_refused_not_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let text = concat!(
            "[source]\npath = \"requests.jsonl\"\nformat = \"requests\"\n",
            "[request]\nmodel = \"m\"\nendpoint = \"/api/generate\"\n",
            "options = { temperature = 0 }\nkeep_alive = \"5m\"\nthink = false\n",
        );
        let file = load(&write(dir.path(), text), &[], |_| None).expect("parses");
        let problems = resolve(&file, dir.path()).expect_err("refused");
        for key in [
            "request.endpoint",
            "request.options",
            "request.keep_alive",
            "request.think",
        ] {
            assert!(
                problems
                    .iter()
                    .any(|problem| problem.starts_with(key)
                        && problem.contains("applies to records")),
                "{key}: {problems:#?}"
            );
        }
        assert_eq!(
            problems.len(),
            4,
            "model still overrides each line: {problems:#?}"
        );
    }
}
